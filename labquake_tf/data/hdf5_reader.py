"""The labquake HDF5 record (layout in CONTRIBUTING.md) -> ``Record``: ``/features/logvar``
as stored, or ``/ae`` streamed in chunks through ``data.raw_ae``."""

import numpy as np

from labquake_tf.data import checks
from labquake_tf.data import features as features_lib
from labquake_tf.data import raw_ae
from labquake_tf.errors import DataError, UsageError

def read_hdf5(path, channels=None, name=None, window=0.1, hop=0.01, chunk_seconds=1.0,
              output="logvar", features=None, ae_features=None, **target_options):
    """An HDF5 record: ``/features/logvar`` if present, else ``/ae`` streamed in chunks
    (``data.raw_ae``: bounded memory, reads overlapped with the feature kernel).
    ``ae_features``: the features of ``/ae`` computed elsewhere (Beam's chunks), used
    instead of reading it.

    ``features="std"`` (or ``output="std"``) gives the square root of the variance
    instead (features named ``std_chN``), the reference PyTorch code's input; from
    ``/ae``, ``output="var"`` gives the variance, for comparison with earlier work.

    Mechanical channels are interpolated onto the feature grid (window ENDS), so
    the target at a step never comes from after the AE that step has seen.
    ``ae_features``: the windows of ``/ae`` already computed elsewhere (``data.beam``,
    in parallel chunks), used instead of reading ``/ae`` here.
    """
    import h5py

    output = features or output
    if output not in features_lib.OUTPUTS:
        raise UsageError(f"output must be one of {features_lib.OUTPUTS}, got {output!r}")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise DataError(f"{path}: not a readable HDF5 file ({h5_reason(e)})") from None
    with f:
        if f.attrs.get("format") != "labquake-hdf5":
            raise DataError(f"{path}: attribute format={f.attrs.get('format')!r}, "
                            "expected 'labquake-hdf5' (the layout in CONTRIBUTING.md)")
        if "mech/shear_stress" not in f or not isinstance(f["mech/shear_stress"], h5py.Dataset):
            raise DataError(f"{path}: missing dataset /mech/shear_stress; found "
                            f"{_h5_datasets(f, h5py)}")
        stress_ds = f["mech/shear_stress"]
        stress = _h5_read(stress_ds, path).reshape(-1)
        stress_time = _attr(stress_ds, "t0", path) + np.arange(len(stress)) / _attr(
            stress_ds, "sample_rate", path, positive=True)
        stress = checks.numeric(path, "/mech/shear_stress", stress, stress_time)
        checks.check_finite(path, "/mech/shear_stress", stress, stress_time)
        name = name or str(f.attrs.get("name", checks.stem(path)))
        # A simulated file says how to make it again (evaluate names it when it is gone).
        simulator = {k: _plain(f.attrs[k]) for k in ("preset", "seed", "mode", "generator")
                     if k in f.attrs}
        if "features/logvar" in f:
            ds = f["features/logvar"]
            logvar = _h5_read(ds, path)
            logvar = logvar.reshape(len(logvar), -1) if logvar.ndim else logvar.reshape(1, 1)
            channels = checks.pick_channels(channels, logvar.shape[1], path)
            time = _attr(ds, "t0", path) + _attr(ds, "hop", path, positive=True) * np.arange(
                len(logvar))
            logvar = checks.numeric(path, "/features/logvar",
                                    logvar[:, [c - 1 for c in channels]], time)
            checks.check_finite(path, "/features/logvar", logvar, time)
            if output != "logvar":
                logvar = (10.0 ** logvar if output == "var"
                          else features_lib.from_logvar(logvar, output))
        elif "ae" in f:
            ae = f["ae"]
            if ae.dtype.kind not in "iuf":
                raise DataError(f"{path}: dataset /ae holds {ae.dtype} values, not numbers")
            channels = checks.pick_channels(channels, ae.shape[1] if ae.ndim == 2 else 1, path)
            sample_rate, t0 = _attr(ae, "sample_rate", path, positive=True), _attr(ae, "t0", path)
            if ae_features is not None:
                lv = features_lib.LogVariance(sample_rate, window, hop, output)
                logvar = np.asarray(ae_features, np.float32)
            else:
                hop_samples = max(1, features_lib.samples(hop, sample_rate))
                rows = max(hop_samples,
                           int(chunk_seconds * sample_rate) // hop_samples * hop_samples)
                lv, logvar = raw_ae.features(raw_ae.hdf5_chunks(ae, rows, path), sample_rate,
                                             channels, window, hop, output)
            time = lv.window_end_time(np.arange(len(logvar)), t0)
        else:
            raise DataError(f"{path}: neither /ae nor /features/logvar present; found "
                            f"{_h5_datasets(f, h5py)}")
    time, logvar, stress = checks.onto_windows(path, "/mech/shear_stress", time, logvar,
                                         stress_time, stress)
    record = checks.finish(name, path, time, logvar, channels, stress, kind=output,
                           **target_options)
    if "seed" in simulator:
        record.attrs["simulator"] = simulator
    return record


def _plain(value):
    if isinstance(value, bytes):
        return value.decode()
    return value.item() if hasattr(value, "item") else value


def h5_reason(err):
    """h5py's 'Unable to synchronously open file (file signature not found)' → the reason."""
    text = str(err)
    return text[text.find("(") + 1:text.rfind(")")] if "(" in text else text


def _h5_read(ds, path):
    try:
        return ds[...]
    except (OSError, RuntimeError, TypeError, ValueError) as e:
        raise DataError(f"{path}: dataset {ds.name} cannot be read ({h5_reason(e)})") from None


def _h5_datasets(f, h5py):
    names = []
    f.visititems(lambda n, obj: names.append("/" + n) if isinstance(obj, h5py.Dataset) else None)
    return ", ".join(names) or "no datasets"


def _attr(ds, key, path, positive=False):
    if key not in ds.attrs:
        raise DataError(f"{path}: dataset {ds.name} has no attribute {key!r}")
    try:
        value = float(ds.attrs[key])
    except (TypeError, ValueError):
        raise DataError(f"{path}: dataset {ds.name} attribute {key}={ds.attrs[key]!r} "
                        "is not a number") from None
    if not np.isfinite(value) or (positive and value <= 0):
        raise DataError(f"{path}: dataset {ds.name} attribute {key}={value:g} must be a "
                        f"{'positive' if positive else 'finite'} number")
    return value
