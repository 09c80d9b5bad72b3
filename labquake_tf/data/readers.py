"""Readers: DDS CSV, HDF5 (layout in CONTRIBUTING.md) and NumPy ``.npz`` → ``Record``.

Every reader ends in ``targets.build_targets`` so all formats share one
definition of filtering, detrending, events and time to failure. The default
feature is one channel (``logvar_ch1``) for every format, so a model trained on
one rig takes the input of any other; ``features="std"`` gives every reader's AE
standard deviation instead (``std_ch1``, the reference PyTorch code's input).

``.npz`` keys: ``time`` (n_steps,) s, END of each AE window; ``logvar``
(n_steps, n_channels) log10 variance; ``shear_stress`` (n_steps,) MPa; optional
``ttsf`` and ``ttef`` (s) to use published labels instead of derived ones.
"""

import csv
import hashlib
import os

import numpy as np

from labquake_tf.data import features as features_lib
from labquake_tf.data import targets as targets_lib
from labquake_tf.data.record import Record

DEFAULT_CHANNELS = (1,)
DDS_COLUMNS = ("Time", "ShearStress")
_KIND_TEXT = {"logvar": "log-variance", "std": "standard deviation", "var": "variance"}


def sha256(path, block=1 << 20):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(block), b""):
            h.update(b)
    return h.hexdigest()


def _channels(channels, n_available, path):
    channels = tuple(DEFAULT_CHANNELS if channels is None else channels)
    bad = [c for c in channels if not 1 <= int(c) <= n_available]
    if bad or not channels:
        raise ValueError(f"{path}: channels {list(channels)} not available "
                         f"(the file has channels 1..{n_available})")
    return [int(c) for c in channels]


def _finish(name, path, time, logvar, channels, shear_stress, published=None, kind="logvar",
            **target_options):
    if not np.all(np.isfinite(logvar)):
        row = int(np.argwhere(~np.isfinite(logvar))[0, 0])
        raise ValueError(f"{path}: non-finite AE {_KIND_TEXT.get(kind, kind)} at step {row} (time {time[row]:g} s)")
    if not np.all(np.isfinite(shear_stress)):
        raise ValueError(f"{path}: non-finite shear stress")
    targets, mask, events, info = targets_lib.build_targets(
        time, shear_stress, published=published, **target_options)
    return Record(name=name, time=np.asarray(time, np.float64),
                  features=np.asarray(logvar, np.float32),
                  feature_names=[f"{kind}_ch{c}" for c in channels], targets=targets,
                  label_mask=mask, events=events, source=os.path.abspath(path),
                  sha256=sha256(path), attrs=info)


def read_dds_csv(path, channels=None, ttf="published", name=None, features="logvar",
                 **target_options):
    """A DDS CSV (0.1 s rows; columns found by name; the unnamed index column is ignored).

    Features are ``log10(Var_ChN)``, or ``sqrt(Var_ChN)`` with ``features="std"``.
    ``ttf="published"`` (default) keeps the files' TimeToStartFailure/TimeToEndFailure
    with their artefact rows masked: those are the labels the reference results were
    computed on. ``"derived"`` counts down to the detected events instead (they agree to one row).
    """
    if ttf not in ("published", "derived"):
        raise ValueError(f"ttf must be 'published' or 'derived', got {ttf!r}")
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        rows = list(reader)
    var_cols = sorted(int(h[6:]) for h in header if h.startswith("Var_Ch") and h[6:].isdigit())
    needed = list(DDS_COLUMNS) + (["TimeToStartFailure", "TimeToEndFailure"] if ttf == "published" else [])
    missing = [c for c in needed if c not in header] or ([] if var_cols else ["Var_Ch1"])
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; found {header}")
    channels = _channels(channels, max(var_cols), path)
    try:
        data = np.array(rows, dtype=np.float64)
    except ValueError as e:
        raise ValueError(f"{path}: non-numeric value ({e})") from None
    if data.ndim != 2 or data.shape[1] != len(header):
        raise ValueError(f"{path}: rows do not all have {len(header)} fields")
    col = {h: data[:, i] for i, h in enumerate(header)}
    x = np.stack([features_lib.from_variance(col[f"Var_Ch{c}"], features) for c in channels],
                 axis=1)
    published = (col["TimeToStartFailure"], col["TimeToEndFailure"]) if ttf == "published" else None
    return _finish(name or _stem(path), path, col["Time"], x, channels, col["ShearStress"],
                   published, kind=features, **target_options)


def read_npz(path, channels=None, name=None, features="logvar", **target_options):
    """A ``.npz`` with the keys documented in this module's docstring."""
    features_lib.check_kind(features)
    with np.load(path) as z:
        missing = [k for k in ("time", "logvar", "shear_stress") if k not in z.files]
        if missing:
            raise ValueError(f"{path}: missing array(s) {missing}; found {z.files}")
        arrays = {k: z[k] for k in z.files}
    logvar = arrays["logvar"].reshape(len(arrays["logvar"]), -1)
    channels = _channels(channels, logvar.shape[1], path)
    published = None
    if "ttsf" in arrays and "ttef" in arrays:
        published = (arrays["ttsf"], arrays["ttef"])
    x = features_lib.from_logvar(logvar[:, [c - 1 for c in channels]], features)
    return _finish(name or _stem(path), path, arrays["time"], x, channels,
                   arrays["shear_stress"], published, kind=features, **target_options)


def read_hdf5(path, channels=None, name=None, window=0.1, hop=0.01, chunk_seconds=1.0,
              output="logvar", features=None, **target_options):
    """An HDF5 record: ``/features/logvar`` if present, else ``/ae`` streamed through tfio.

    ``features="std"`` (or ``output="std"``) gives the square root of the variance
    instead (features named ``std_chN``), the reference PyTorch code's input; from
    ``/ae``, ``output="var"`` gives the variance, for comparison with earlier work.

    Mechanical channels are interpolated onto the feature grid (window ENDS), so
    the target at a step never comes from after the AE that step has seen.
    """
    import h5py

    output = features or output
    if output not in features_lib.OUTPUTS:
        raise ValueError(f"output must be one of {features_lib.OUTPUTS}, got {output!r}")
    with h5py.File(path, "r") as f:
        if f.attrs.get("format") != "labquake-hdf5":
            raise ValueError(f"{path}: attribute format={f.attrs.get('format')!r}, "
                             "expected 'labquake-hdf5'")
        if "mech/shear_stress" not in f:
            raise ValueError(f"{path}: missing dataset /mech/shear_stress")
        stress_ds = f["mech/shear_stress"]
        stress = stress_ds[...].astype(np.float64)
        stress_time = _attr(stress_ds, "t0", path) + np.arange(len(stress)) / _attr(
            stress_ds, "sample_rate", path)
        name = name or str(f.attrs.get("name", _stem(path)))
        if "features/logvar" in f:
            ds = f["features/logvar"]
            logvar = ds[...].reshape(len(ds), -1)
            channels = _channels(channels, logvar.shape[1], path)
            logvar = logvar[:, [c - 1 for c in channels]]
            if output != "logvar":
                logvar = 10.0 ** logvar if output == "var" else features_lib.from_logvar(logvar, output)
            time = _attr(ds, "t0", path) + _attr(ds, "hop", path) * np.arange(len(logvar))
            ae = None
        elif "ae" in f:
            ae = f["ae"]
            n_ch = ae.shape[1] if ae.ndim == 2 else 1
            channels = _channels(channels, n_ch, path)
            sample_rate, t0 = _attr(ae, "sample_rate", path), _attr(ae, "t0", path)
        else:
            raise ValueError(f"{path}: neither /ae nor /features/logvar present")
    if ae is not None:
        lv = features_lib.LogVariance(sample_rate, window, hop, output)
        chunk = max(lv.hop, int(chunk_seconds * sample_rate) // lv.hop * lv.hop)
        parts = [lv.update(c[:, [c_ - 1 for c_ in channels]])
                 for c in iter_hdf5_ae(path, chunk)]
        logvar = np.concatenate(parts)
        time = lv.window_end_time(np.arange(len(logvar)), t0)
    # t0 + hop * k rounds up past a stress sample on the same instant (1e-15 s); a
    # microsecond of slack keeps that window, far below any hop or sample interval.
    slack = 1e-6
    inside = (time >= stress_time[0] - slack) & (time <= stress_time[-1] + slack)
    if not inside.any():
        raise ValueError(f"{path}: the AE feature times do not overlap /mech/shear_stress")
    time, logvar = time[inside], logvar[inside]
    return _finish(name, path, time, logvar, channels, np.interp(time, stress_time, stress),
                   kind=output, **target_options)


def iter_hdf5_ae(path, chunk_samples):
    """Yield ``(n, n_channels)`` chunks of ``/ae`` read through tensorflow-io.

    ``IOTensor`` slices read only the rows asked for. (``IODataset.from_hdf5``
    yields one row per element; re-batching 2 MHz samples through tf.data costs
    ~20 us per row, 1000x slower than the slices.)
    """
    import tensorflow_io as tfio

    ae = tfio.IOTensor.from_hdf5(str(path))("/ae")
    n = int(ae.shape[0])
    for start in range(0, n, chunk_samples):
        x = ae[start:min(start + chunk_samples, n)].numpy()
        yield x[:, None] if x.ndim == 1 else x


def _attr(ds, key, path):
    if key not in ds.attrs:
        raise ValueError(f"{path}: dataset {ds.name} has no attribute {key!r}")
    return float(ds.attrs[key])


def _stem(path):
    return os.path.splitext(os.path.basename(str(path)))[0]


READERS = {".csv": read_dds_csv, ".npz": read_npz, ".h5": read_hdf5, ".hdf5": read_hdf5}


def read(path, **options):
    """Dispatch on the file suffix."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file")
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in READERS:
        raise ValueError(f"{path}: unknown record format {suffix!r} (known: {sorted(READERS)})")
    return READERS[suffix](path, **options)
