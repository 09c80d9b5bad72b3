"""Raw AE waveforms (HDF5 ``/ae``, an ``.npz`` member, ``.npy``) to features in bounded memory.

A record of hundreds of GB is read in chunks of ``chunk_rows`` rows into a few reused
buffers; a reader thread fills the next buffer while ``features.LogVariance`` reduces
the current one (h5py and file reads release the GIL), so the rate is set by the slower
of the two instead of their sum. Peak memory is ``(depth + 1)`` chunk buffers, whatever
the record's length.
"""

import queue
import struct
import threading
import zipfile

import numpy as np

from labquake_tf.data import features as features_lib
from labquake_tf.errors import DataError

CHUNK_BYTES = 16 << 20
"""Bytes per read: large enough that per-call costs vanish, small enough to stay bounded."""


def chunk_rows(row_bytes, hop=1):
    """Rows per chunk of about ``CHUNK_BYTES``, a multiple of ``hop`` so no block is cut."""
    return max(hop, CHUNK_BYTES // max(1, row_bytes) // hop * hop)


def read_ahead(read, n_rows, row_shape, dtype, rows, depth=2, path="record"):
    """Yield ``(n, *row_shape)`` views of reused buffers filled by ``read(start, n, out)``
    in a background thread, ``depth`` chunks ahead. A view is valid until the next one is
    asked for: consumers copy what they keep (``LogVariance`` does)."""
    free, full, stop = queue.Queue(), queue.Queue(), threading.Event()
    for _ in range(depth + 1):
        free.put(np.empty((rows,) + tuple(row_shape), dtype))

    def produce():
        try:
            for start in range(0, n_rows, rows):
                buf = free.get()
                if stop.is_set():
                    return
                n = min(rows, n_rows - start)
                read(start, n, buf[:n])
                full.put((buf, n))
            full.put(None)
        except Exception as e:  # handed to the consumer, raised there
            full.put(e)

    thread = threading.Thread(target=produce, name=f"read-ahead {path}", daemon=True)
    thread.start()
    try:
        while True:
            item = full.get()
            if item is None:
                return
            if isinstance(item, Exception):
                raise item
            buf, n = item
            yield buf[:n]
            free.put(buf)
    finally:
        stop.set()
        free.put(None)  # wakes a producer waiting for a buffer
        thread.join()


def hdf5_chunks(ds, rows, path):
    """Chunks of the h5py dataset ``ds`` (``(n,)`` or ``(n, n_channels)``), read ahead."""
    def read(start, n, out):
        try:
            ds.read_direct(out if ds.ndim == 2 else out.reshape(n),
                           np.s_[start:start + n], np.s_[0:n])
        except (OSError, RuntimeError, TypeError, ValueError) as e:
            raise DataError(f"{path}: dataset {ds.name} rows {start}..{start + n} cannot be "
                            f"read ({e})") from None

    return read_ahead(read, ds.shape[0], (ds.shape[1] if ds.ndim == 2 else 1,), ds.dtype,
                      rows, path=path)


def npy_stream_chunks(fp, hop_samples, label):
    """Chunks of the ``.npy`` stream ``fp`` (a file or an ``.npz`` member), read ahead.

    Only the header is parsed here; the array streams through ``readinto``.
    Returns ``(chunks, n_rows, n_channels, dtype)``."""
    try:
        version = np.lib.format.read_magic(fp)
        header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                  else np.lib.format.read_array_header_2_0)
        shape, fortran, dtype = header(fp)
    except ValueError as e:
        raise DataError(f"{label}: not a NumPy array ({e})") from None
    if len(shape) not in (1, 2) or dtype.kind not in "iuf":
        raise DataError(f"{label}: AE must be (n_samples,) or (n_samples, n_channels) numbers, "
                        f"got shape {shape} {dtype}")
    n_ch = shape[1] if len(shape) == 2 else 1
    if fortran and n_ch > 1:
        raise DataError(f"{label}: AE is stored column-major (Fortran order); save it "
                        "row-major (np.ascontiguousarray) so it can be streamed")
    rows = chunk_rows(n_ch * dtype.itemsize, hop_samples)

    def read(start, n, out):
        view = memoryview(out.reshape(-1).view(np.uint8))
        got = 0
        while got < len(view):
            k = fp.readinto(view[got:])
            if not k:
                raise DataError(f"{label}: truncated: {shape[0]} rows announced, "
                                f"{start + got // (n_ch * dtype.itemsize)} found")
            got += k

    return read_ahead(read, shape[0], (n_ch,), dtype, rows, path=label), shape[0], n_ch, dtype


def features(chunks, sample_rate, channels, window=0.1, hop=0.01, output="logvar"):
    """Features of the 1-based ``channels`` of streamed ``(n, n_channels)`` chunks.

    All channels of a chunk go through the kernel (it reads whole rows anyway); the
    columns asked for are picked from the few window values, not from the samples."""
    # One kernel thread: the reader thread already keeps a core busy, and splitting the
    # kernel over more threads made them fight it for the cores (measured: raw_vs_read
    # 0.57-0.71 with 2 kernel threads, 0.60-0.82 with 1, same runs' load, 2 cores).
    lv = features_lib.LogVariance(sample_rate, window, hop, output, workers=1)
    cols = [c - 1 for c in channels]
    try:
        parts = [lv.update(c)[:, cols] for c in chunks]
    finally:
        chunks.close()  # stops a read-ahead thread before its file closes
    values = np.concatenate(parts) if parts else np.zeros((0, len(cols)), np.float32)
    return lv, values


def npz_ae_features(path, sample_rate, pick_channels, window=0.1, hop=0.01, output="logvar"):
    """Features from the ``ae`` member of an ``.npz``, streamed out of the archive.

    ``pick_channels(n_channels)`` gives the 1-based channels to keep (or raises).
    Returns ``(LogVariance, values, channels)``."""
    with zipfile.ZipFile(path) as z, _open_member(z, "ae.npy", path) as fp:
        chunks, _, n_ch, _ = npy_stream_chunks(
            fp, features_lib.samples(hop, sample_rate), f"{path}: array 'ae'")
        channels = pick_channels(n_ch)
        lv, values = features(chunks, sample_rate, channels, window, hop, output)
    return lv, values, channels


def _open_member(z, name, path):
    """An archive member as a file. A stored (uncompressed, as ``np.savez`` writes) member
    is read straight from the file at its data offset: zipfile's reads check a CRC-32 as
    they go, which halves the rate; a compressed one goes through zipfile."""
    info = z.getinfo(name)
    if info.compress_type != zipfile.ZIP_STORED:
        return z.open(info)
    fp = open(path, "rb")
    fp.seek(info.header_offset)
    local = fp.read(30)  # the local file header; name and extra field lengths at 26..29
    if len(local) < 30 or local[:4] != b"PK\x03\x04":
        fp.close()
        raise DataError(f"{path}: member {name} has no local header (a damaged archive)")
    n_name, n_extra = struct.unpack("<HH", local[26:30])
    fp.seek(info.header_offset + 30 + n_name + n_extra)
    return fp
