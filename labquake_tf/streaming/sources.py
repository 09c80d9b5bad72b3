"""Where a stream comes from: a recorded file replayed, or raw frames on stdin.

Every source yields ``Chunk``s: ``kind`` ``"raw"`` (AE samples ``(n, n_channels)``,
``time`` = time of the first sample) or ``"features"`` (log-variance steps
``(n, n_features)`` with ``time`` = their time stamps, window ends), and ``span``,
the stream time the chunk covers (for real-time pacing and the real-time factor).
"""

import dataclasses
import os

import numpy as np


@dataclasses.dataclass
class Chunk:
    kind: str
    data: np.ndarray
    time: object  # float (raw: first sample) or array (features: each step)
    span: float


@dataclasses.dataclass
class Source:
    kind: str                 # "raw" or "features"
    chunks: object            # an iterator of Chunk
    sample_rate: float = None  # raw only
    t0: float = 0.0
    name: str = ""
    record: object = None     # the Record, for features replay (truth, events)


def open_record(path_or_name, level="auto", chunk_seconds=0.01, start=None, end=None):
    """A recorded HDF5/CSV/NPZ record (or dataset name) as a ``Source``.

    ``level="raw"`` replays an HDF5 ``/ae`` waveform sample by sample (in chunks);
    ``"features"`` replays log-variance steps (the DDS CSVs hold precomputed
    variance, not raw AE; an HDF5's ``/features/logvar``, or its ``/ae`` turned into
    features first); ``"auto"`` takes raw AE where the file has it.
    """
    if level not in ("auto", "raw", "features"):
        raise ValueError(f"level must be auto, raw or features, got {level!r}")
    path = os.fspath(path_or_name)
    is_h5 = os.path.splitext(path)[1].lower() in (".h5", ".hdf5")
    if is_h5 and level != "features":
        import h5py

        if not os.path.exists(path):
            raise FileNotFoundError(f"{path}: no such file")
        with h5py.File(path, "r") as f:
            has_ae = "ae" in f
            if has_ae:
                ae = f["ae"]
                rate, n = float(ae.attrs["sample_rate"]), ae.shape[0]
                t0 = float(ae.attrs.get("t0", 0.0))
        if has_ae:
            return _raw_hdf5(path, rate, t0, n, chunk_seconds, start, end)
        if level == "raw":
            raise ValueError(f"{path}: no /ae raw waveform; replay it with --level features")
    elif level == "raw":
        raise ValueError(f"{path}: only HDF5 records hold raw AE (/ae); use --level features")
    from labquake_tf.data.registry import load_record

    record = load_record(path)
    keep = np.ones(len(record), bool)
    if start is not None:
        keep &= record.time >= start
    if end is not None:
        keep &= record.time <= end
    idx = np.flatnonzero(keep)
    if not len(idx):
        raise ValueError(f"{path}: no feature step between --start {start} and --end {end}")
    dt = record.dt
    step = max(1, int(round(chunk_seconds / dt)))

    def chunks():
        for i in range(idx[0], idx[-1] + 1, step):
            j = min(i + step, idx[-1] + 1)
            yield Chunk("features", record.features[i:j], record.time[i:j], (j - i) * dt)

    return Source("features", chunks(), t0=float(record.time[idx[0]]), name=record.name,
                  record=record)


def _raw_hdf5(path, rate, t0, n, chunk_seconds, start, end):
    first = 0 if start is None else max(0, int(np.ceil((start - t0) * rate)))
    last = n if end is None else min(n, int(np.floor((end - t0) * rate)) + 1)
    if last <= first:
        raise ValueError(f"{path}: no AE sample between --start {start} and --end {end}")
    size = max(1, int(round(chunk_seconds * rate)))

    def chunks():
        import tensorflow_io as tfio

        # IOTensor slices read only the rows asked for (see data.raw_ae.hdf5_chunks).
        ae = tfio.IOTensor.from_hdf5(str(path))("/ae")
        for i in range(first, last, size):
            x = ae[i:min(i + size, last)].numpy()
            yield Chunk("raw", x[:, None] if x.ndim == 1 else x, t0 + i / rate, len(x) / rate)

    return Source("raw", chunks(), sample_rate=rate, t0=t0 + first / rate,
                  name=os.path.splitext(os.path.basename(path))[0])


class FrameError(ValueError):
    """Raw frames on stdin that do not match --dtype / --channels."""


def stdin_source(stream, dtype, channels, sample_rate, chunk_seconds=0.01, t0=0.0):
    """Raw interleaved frames (``channels`` samples of ``dtype`` each) from a binary
    stream. A stream that starts with a NumPy ``.npy`` header is checked against
    ``dtype``/``channels``; raw bytes cannot be, so implausible float samples
    (|x| > 1e20, what integers read as floats look like) stop the stream, and bytes
    left over at the end (a truncated frame) are an error."""
    dtype = np.dtype(dtype)
    if channels < 1 or sample_rate <= 0:
        raise ValueError(f"--channels {channels} and --sample-rate {sample_rate} must be positive")
    frame = dtype.itemsize * channels
    peek = stream.peek(6)[:6] if hasattr(stream, "peek") else b""
    if peek == b"\x93NUMPY":
        version = np.lib.format.read_magic(stream)
        reader = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                  else np.lib.format.read_array_header_2_0)
        shape, _, header_dtype = reader(stream)
        n_ch = shape[1] if len(shape) == 2 else 1
        if np.dtype(header_dtype) != dtype or n_ch != channels:
            raise FrameError(f"stdin: the .npy header says dtype {np.dtype(header_dtype)} and "
                             f"{n_ch} channel(s), but --dtype {dtype} --channels {channels} "
                             "were given")
    want = max(frame, int(round(chunk_seconds * sample_rate)) * frame)
    read = getattr(stream, "read1", stream.read)

    def chunks():
        pending = b""
        n_done = 0
        while True:
            data = read(want)
            if not data:
                break
            data = pending + data
            usable = len(data) // frame * frame
            pending = data[usable:]
            if not usable:
                continue
            x = np.frombuffer(data[:usable], dtype).reshape(-1, channels)
            if dtype.kind == "f":
                with np.errstate(invalid="ignore"):
                    huge = np.abs(x) > 1e20
                if huge.any():
                    i = n_done + int(np.argwhere(huge)[0, 0])
                    raise FrameError(f"stdin: frame {i} holds {x[huge][0]:g}, not an AE sample "
                                     f"value: is --dtype {dtype} (and --channels {channels}) "
                                     "right?")
            yield Chunk("raw", x, t0 + n_done / sample_rate, len(x) / sample_rate)
            n_done += len(x)
        if pending:
            raise FrameError(f"stdin ended inside a frame: {len(pending)} trailing byte(s) of a "
                             f"{frame}-byte frame (--dtype {dtype} --channels {channels}); "
                             f"{n_done} whole frames were read")

    return Source("raw", chunks(), sample_rate=float(sample_rate), t0=t0, name="stdin")
