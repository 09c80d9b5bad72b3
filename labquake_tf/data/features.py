"""Streaming windowed log10-variance of continuous AE, any number of channels.

The waveform arrives in chunks of any length and is never held whole. Each chunk
is cut into hop blocks whose sums of ``x`` and ``x**2`` are exact integers for
integer input (``data.block_sums``: one fused pass); a window is ``window // hop``
consecutive blocks, so its variance comes from a running sum over block sums instead
of a pass over its samples. Chunks are split across threads.
"""

import concurrent.futures
import os

import numpy as np

from labquake_tf.data.block_sums import block_sums

OUTPUTS = ("logvar", "var", "std")

FEATURE_KINDS = {"logvar": "log10(AE variance)", "std": "AE standard deviation"}
"""What a model may be fed, with the manifest's unit text. ``logvar`` is this package's
default; ``std`` (sqrt of the variance) is the reference PyTorch code's input, so a
model imported from it (``labquake import-torch``) is fed what it was trained on."""


def check_kind(kind):
    if kind not in FEATURE_KINDS:
        raise ValueError(f"features must be one of {sorted(FEATURE_KINDS)}, got {kind!r}")
    return kind


def from_variance(var, kind):
    """AE variance -> the feature ``kind`` (``log10`` of 0 is ``-inf``, caught by readers)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log10(var) if check_kind(kind) == "logvar" else np.sqrt(var)


def from_logvar(logvar, kind):
    """log10 variance -> the feature ``kind``."""
    return logvar if check_kind(kind) == "logvar" else np.power(10.0, np.asarray(logvar) / 2)


def manifest_kind(manifest):
    """The feature kind a model's manifest says it takes; manifests from before the
    ``feature_kind`` field name it only in ``feature_names``, and were log-variance."""
    if manifest.get("feature_kind"):
        return check_kind(manifest["feature_kind"])
    return feature_kind(manifest.get("feature_names") or []) or "logvar"


def feature_kind(feature_names):
    """The kind behind feature names like ``std_ch1``, or None if they name no one kind."""
    kinds = {str(n).rsplit("_ch", 1)[0] for n in feature_names}
    return kinds.pop() if len(kinds) == 1 and kinds <= set(OUTPUTS) else None


_POOLS = {}


def _pool(workers):
    """A thread pool of ``workers`` threads, made once per size and reused."""
    if workers not in _POOLS:
        _POOLS[workers] = concurrent.futures.ThreadPoolExecutor(workers, "logvariance")
    return _POOLS[workers]


def samples(seconds, sample_rate):
    """A duration in whole samples, as ``LogVariance`` counts its window and hop."""
    return int(round(seconds * sample_rate))


class LogVariance:
    """Feed chunks with ``update``; each call returns the windows it completed.

    Window ``k`` covers samples ``[k * hop, k * hop + window)``; its time stamp
    (window END) is ``t0 + (k * hop + window) / sample_rate``.
    """

    def __init__(self, sample_rate, window=0.1, hop=0.01, output="logvar", workers=None):
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
        self.hop, self.window = samples(hop, sample_rate), samples(window, sample_rate)
        if self.hop < 1 or self.window < self.hop or self.window % self.hop:
            raise ValueError(f"window ({window} s = {self.window} samples) must be a positive "
                             f"multiple of hop ({hop} s = {self.hop} samples) at {sample_rate} Hz")
        self.sample_rate, self.output = float(sample_rate), output
        self.blocks_per_window = self.window // self.hop
        self.workers = workers or os.cpu_count() or 1
        self._pending = None  # samples that do not fill a hop block yet
        self._tail = None     # block sums of the last (blocks_per_window - 1) blocks

    def window_end_time(self, k, t0=0.0):
        return t0 + (np.asarray(k) * self.hop + self.window) / self.sample_rate

    def update(self, chunk):
        chunk = np.asarray(chunk)
        chunk = chunk[:, None] if chunk.ndim == 1 else chunk
        head = np.zeros((0,) + chunk.shape[1:], chunk.dtype)
        if self._pending is not None and len(self._pending):
            # Complete the pending block with the chunk's first samples; the rest
            # of the chunk is used in place, never copied.
            need = self.hop - len(self._pending)
            head = np.concatenate([self._pending, chunk[:need]])
            chunk = chunk[need:]
            if len(head) < self.hop:
                self._pending = head
                return self._windows(self._append(self._block_sums(head[:0], 0)))
        n_blocks = len(chunk) // self.hop
        self._pending = chunk[n_blocks * self.hop:].copy()
        sums = self._block_sums(chunk[:n_blocks * self.hop], n_blocks)
        if len(head):
            sums = np.concatenate([self._block_sums(head, 1), sums])
        return self._windows(self._append(sums))

    def _append(self, sums):
        """Prefix the carried block sums; keep the last ones for the next chunk."""
        if self._tail is not None:
            sums = np.concatenate([self._tail, sums])
        keep = self.blocks_per_window - 1
        # max(0, ...): before the first window there are fewer than keep blocks, all kept.
        self._tail = sums[max(0, len(sums) - keep):] if keep else sums[:0]
        return sums

    def _block_sums(self, x, n_blocks):
        """(n_blocks, 2, n_channels) sums of x, x**2: int64 (exact) for integer input,
        float64 for float input."""
        integer = np.issubdtype(x.dtype, np.integer)
        out = np.empty((n_blocks, 2, x.shape[1]), np.int64 if integer else np.float64)
        if n_blocks == 0:
            return out
        # Threads split the blocks: the kernels release the GIL, so both cores work. The
        # pool is kept: starting threads per chunk cost a quarter of a 16 MiB chunk's time.
        edges = np.linspace(0, n_blocks, min(self.workers, n_blocks) + 1).astype(int)
        if len(edges) > 2:
            list(_pool(len(edges) - 1).map(lambda lo, hi: block_sums(x, self.hop, out, lo, hi),
                                           edges[:-1], edges[1:]))
        else:
            block_sums(x, self.hop, out, 0, n_blocks)
        return out

    def _windows(self, sums):
        k = self.blocks_per_window
        if len(sums) < k:
            return np.zeros((0, sums.shape[2]), np.float32)
        # Exact integer running sums over k blocks, then one float division.
        c = np.cumsum(sums, axis=0)
        win = c[k - 1:].copy()
        win[1:] -= c[:-k]
        n = float(self.window)
        mean = win[:, 0] / n
        var = np.maximum(win[:, 1] / n - mean * mean, 0.0)
        if self.output == "var":
            return var.astype(np.float32)
        if self.output == "std":
            return np.sqrt(var).astype(np.float32)
        with np.errstate(divide="ignore"):
            return np.log10(var).astype(np.float32)


def log_variance(chunks, sample_rate, window=0.1, hop=0.01, output="logvar", workers=None):
    """All windows of an iterable of ``(n, n_channels)`` chunks (or one array)."""
    if isinstance(chunks, np.ndarray):
        chunks = [chunks]
    lv = LogVariance(sample_rate, window, hop, output, workers)
    parts = [lv.update(c) for c in chunks]
    return np.concatenate(parts) if parts else np.zeros((0, 1), np.float32)
