"""Per-hop-block sums of ``x`` and ``x**2``, the one pass over raw AE that features need.

``block_sums(x, hop, out, lo, hi)`` fills ``out[lo:hi]`` (``(n_blocks, 2, n_channels)``)
from the ``(n_blocks * hop, n_channels)`` samples ``x``. Integer samples give exact int64
sums, float samples float64 sums.

For 8/16-bit integers (what digitisers write) a numba kernel makes one fused pass at
memory speed: 3-4x one ``np.sum`` over the same samples, where numpy needs a widened copy
and two reductions (0.4-0.7x). Without numba, or for other dtypes, numpy does it:
float64 tiles for 8/16-bit samples (every square and block sum is an exact integer in
float64 while ``hop < 2**23``), int64 ``einsum`` for wider integers.
"""

import math

import numpy as np

try:
    import numba
except ImportError:  # an environment without numba runs the numpy path, same results
    numba = None

FAST_DTYPES = tuple(np.dtype(t) for t in (np.int8, np.uint8, np.int16, np.uint16))
LANES = 64
"""About this many accumulator lanes in the multi-channel kernel: a multiple of both the
channel count (lane ``j`` always holds channel ``j % n_channels`` of interleaved rows)
and 16 (whole vectors: 48 lanes run 3 channels at 5.9 G samples/s, 63 at 3.6)."""


def has_fast_kernel(dtype):
    return numba is not None and np.dtype(dtype) in FAST_DTYPES


def block_sums(x, hop, out, lo, hi):
    """Fill ``out[lo:hi]`` with the sums of blocks ``lo..hi-1`` of ``x`` (see module doc)."""
    if hi <= lo:
        return
    if has_fast_kernel(x.dtype) and hop < 2 ** 31:
        rows = x[lo * hop:hi * hop]
        if not rows.flags.c_contiguous or not rows.dtype.isnative:
            rows = np.ascontiguousarray(rows, rows.dtype.newbyteorder("="))
        if rows.shape[1] == 1:
            _sums_one(rows.reshape(-1), np.uint64(hop), out[lo:hi])
        else:
            unit = math.lcm(rows.shape[1], 16)
            lanes = unit * max(1, LANES // unit)
            _sums_interleaved(rows.reshape(-1), np.uint64(hop), np.uint64(rows.shape[1]),
                              np.uint64(lanes), out[lo:hi])
        return
    blocks = x.reshape(-1, hop, x.shape[1])
    integer = np.issubdtype(x.dtype, np.integer)
    if integer and (x.dtype.itemsize > 2 or hop >= 2 ** 23):
        _int64_sums(blocks, out, lo, hi)
    else:
        _float64_sums(blocks, out, lo, hi, hop)


def _float64_sums(blocks, out, lo, hi, hop):
    # Each ~2 MiB tile is converted once and reduced twice from cache: twice as fast
    # as numpy's casting reductions over int16 blocks (two passes over memory).
    n_ch = blocks.shape[2]
    tile = max(1, (2 << 20) // (hop * n_ch * 8))
    buf = np.empty((min(tile, hi - lo), n_ch, hop))
    for i in range(lo, hi, tile):
        b = blocks[i:min(i + tile, hi)]
        t = buf[:len(b)]
        np.copyto(t, b.transpose(0, 2, 1))
        out[i:i + len(b), 0] = t.sum(axis=2)
        out[i:i + len(b), 1] = np.einsum("ijk,ijk->ij", t, t)


def _int64_sums(blocks, out, lo, hi):
    tile = max(1, (256 << 10) // (blocks.shape[1] * blocks.shape[2] * blocks.itemsize))
    for i in range(lo, hi, tile):
        b = blocks[i:min(i + tile, hi)]
        out[i:i + len(b), 0] = b.sum(axis=1, dtype=np.int64)
        # einsum multiplies and accumulates in int64 without a widened copy.
        out[i:i + len(b), 1] = np.einsum("ijk,ijk->ik", b, b, dtype=np.int64)


def _jit(fn):
    # cache=True: a process pays the ~1 s compile once per machine, not once per run.
    # Unsigned indices spare numba's negative-index wraparound, which otherwise keeps
    # LLVM from vectorising the loads (2.5 -> 9 G samples/s single channel).
    return numba.njit(nogil=True, cache=True)(fn) if numba is not None else None


@_jit
def _sums_one(flat, hop, out):
    zero = np.uint64(0)
    for b in range(zero, np.uint64(out.shape[0])):
        s = np.int64(0)
        q = np.int64(0)
        start = b * hop
        for i in range(start, start + hop):
            v = np.int64(flat[i])
            s += v
            q += v * v
        out[b, 0, 0] = s
        out[b, 1, 0] = q


@_jit
def _sums_interleaved(flat, hop, n_ch, lanes, out):
    # Rows are interleaved channels; accumulating into `lanes` (a multiple of n_ch)
    # slots keeps the loads contiguous and vectorised.
    zero = np.uint64(0)
    row_len = hop * n_ch
    s = np.zeros(lanes, np.int64)
    q = np.zeros(lanes, np.int64)
    for b in range(zero, np.uint64(out.shape[0])):
        s[:] = 0
        q[:] = 0
        start = b * row_len
        stop = start + row_len
        j = start
        while j + lanes <= stop:
            for k in range(zero, lanes):
                v = np.int64(flat[j + k])
                s[k] += v
                q[k] += v * v
            j += lanes
        k = zero
        while j < stop:  # the rows left over, still whole rows: lane k is channel k % n_ch
            v = np.int64(flat[j])
            s[k] += v
            q[k] += v * v
            j += np.uint64(1)
            k += np.uint64(1)
        for c in range(zero, n_ch):
            out[b, 0, c] = 0
            out[b, 1, c] = 0
        for k in range(zero, lanes):
            out[b, 0, k % n_ch] += s[k]
            out[b, 1, k % n_ch] += q[k]
