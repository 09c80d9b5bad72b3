"""Readers: DDS CSV, HDF5 (layout in CONTRIBUTING.md) and NumPy ``.npz`` → ``Record``.

Every reader ends in ``targets.build_targets`` so all formats share one
definition of filtering, detrending, events and time to failure. The default
feature is one channel (``logvar_ch1``) for every format, so a model trained on
one rig takes the input of any other; ``features="std"`` gives every reader's AE
standard deviation instead (``std_ch1``, the reference PyTorch code's input).

``.npz`` keys: ``time`` (n_steps,) s, END of each AE window; ``logvar``
(n_steps, n_channels) log10 variance; ``shear_stress`` (n_steps,) MPa; optional
``ttsf`` and ``ttef`` (s) to use published labels instead of derived ones.
Raw layout instead of ``logvar``: ``ae`` (n_samples,) or (n_samples, n_channels) AE
waveform, streamed from the archive in chunks; ``ae_sample_rate`` Hz; optional ``ae_t0``
s (time of sample 0, default 0); ``time`` and ``shear_stress`` then are the stress
samples, interpolated onto the AE window ends as from HDF5.
"""

import csv
import hashlib
import io
import os
import zipfile

import numpy as np

from labquake_tf.data import features as features_lib
from labquake_tf.data import raw_ae
from labquake_tf.data import targets as targets_lib
from labquake_tf.data.record import Record
from labquake_tf.errors import DataError, UsageError, more_text, row_text

DEFAULT_CHANNELS = (1,)
DDS_COLUMNS = ("Time", "ShearStress")
_KIND_TEXT = {"logvar": "log-variance", "std": "standard deviation", "var": "variance"}
PUBLISHED_TTF_COLUMNS = ("TimeToStartFailure", "TimeToEndFailure")
MIN_ROWS = 32
"""Fewer rows cannot hold a stick-slip cycle, nor feed the stress low-pass filter."""


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
        raise DataError(f"{path}: channels {list(channels)} not available "
                        f"(the file has channels 1..{n_available}; --channels picks them)")
    return [int(c) for c in channels]


def _seconds(t):
    """A time for a message: ``3949.3``, ``12.07``."""
    return f"{t:.2f}".rstrip("0").rstrip(".") if np.isfinite(t) else str(t)


def _at_time(time, i):
    try:
        return f" (t = {_seconds(float(time[i]))} s)"
    except (TypeError, ValueError, IndexError):
        return ""


def _finish(name, path, time, logvar, channels, shear_stress, published=None, kind="logvar",
            **target_options):
    if len(time) < MIN_ROWS:
        raise DataError(f"{path}: {len(time)} rows of data; a record needs at least {MIN_ROWS} "
                        "(and three stick-slip events to split)")
    bad = ~np.isfinite(logvar)
    if bad.any():
        row, col = (int(i) for i in np.argwhere(bad)[0])
        raise DataError(f"{path}: AE {_KIND_TEXT.get(kind, kind)} of channel {channels[col]} "
                        f"is not finite in "
                        f"the window ending t = {_seconds(time[row])} s (a zero-variance or "
                        f"non-finite stretch of the AE){more_text(int(bad.sum()) - 1, 'window')}")
    _check_finite(path, "shear_stress", shear_stress, time)
    targets, mask, events, info = targets_lib.build_targets(
        time, shear_stress, published=published, **target_options)
    return Record(name=name, time=np.asarray(time, np.float64),
                  features=np.asarray(logvar, np.float32),
                  feature_names=[f"{kind}_ch{c}" for c in channels], targets=targets,
                  label_mask=mask, events=events, source=os.path.abspath(path),
                  sha256=sha256(path), attrs=info)


def _where(label, index, time):
    """``shear_stress[1500] (t = 250 s)``: an array element as numpy indexes it."""
    return (f"{label}[{', '.join(map(str, index))}]"
            f"{'' if time is None else _at_time(time, index[0])}")


def _check_finite(path, label, values, time=None):
    """NaN/Inf in an array read from ``path`` → a DataError naming the first one."""
    values = np.asarray(values)
    bad = ~np.isfinite(values)
    if bad.any():
        index = tuple(int(i) for i in np.argwhere(bad)[0])
        raise DataError(f"{path}: {_where(label, index, time)} is {values[index]}, not a finite "
                        f"number{more_text(int(bad.sum()) - 1)}")


def _check_increasing(path, label, time):
    step = np.diff(time)
    if len(step) and not (step > 0).all():
        i = int(np.argmin(step > 0)) + 1
        raise DataError(f"{path}: {label}[{i}] = {time[i]:g} s does not come after "
                        f"{label}[{i - 1}] = {time[i - 1]:g} s (time must increase)")


def _numeric(path, label, values, time=None):
    """An array as float64, or a DataError naming its first non-number."""
    values = np.asarray(values)
    if values.dtype.kind in "biuf":
        return values.astype(np.float64)
    if values.dtype.kind not in "USO":  # complex, dates, ...
        raise DataError(f"{path}: {label} holds {values.dtype} values, not numbers")
    try:
        return values.astype(np.float64)  # numbers stored as text convert
    except (TypeError, ValueError):
        pass
    bad = [i for i in np.ndindex(values.shape) if not _is_number(values[i])]
    index = bad[0] if bad else (0,) * values.ndim
    shown = values[index]
    shown = shown.decode(errors="replace") if isinstance(shown, bytes) else shown
    raise DataError(f"{path}: {_where(label, index, time)}: {shown!r} is not a number"
                    f"{more_text(len(bad) - 1)}")


def _is_number(value):
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def read_dds_csv(path, channels=None, ttf="published", name=None, features="logvar",
                 **target_options):
    """A DDS CSV (0.1 s rows; columns found by name; the unnamed index column is ignored).

    Features are ``log10(Var_ChN)``, or ``sqrt(Var_ChN)`` with ``features="std"``.
    ``ttf="published"`` (default) keeps the files' TimeToStartFailure/TimeToEndFailure
    with their artefact rows masked: those are the labels the reference results were
    computed on. ``"derived"`` counts down to the detected events instead (they agree to one row).

    Errors name the row as an editor numbers the file's lines (the header is
    row 1, the first data row is row 2) and the column by its header.
    """
    if ttf not in ("published", "derived"):
        raise UsageError(f"ttf must be 'published' or 'derived' (--ttf), got {ttf!r}")
    with open(path, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise DataError(f"{path} row {row_text(line)}: byte 0x{raw[e.start]:02x} is not UTF-8 "
                        "text (not a CSV file?)") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    header = [h.strip() for h in next(reader, [])]
    rows = list(reader)
    while rows and not rows[-1]:  # blank lines at the end of the file
        rows.pop()
    if not any(header):
        raise DataError(f"{path}: no header row (an empty CSV); expected columns "
                        f"{', '.join(DDS_COLUMNS)}, Var_Ch1, ...")
    var_cols = sorted(int(h[6:]) for h in header if h.startswith("Var_Ch") and h[6:].isdigit())
    needed = list(DDS_COLUMNS) + (list(PUBLISHED_TTF_COLUMNS) if ttf == "published" else [])
    missing = [c for c in needed if c not in header] + ([] if var_cols else ["Var_Ch1"])
    if missing:
        hint = ("; --ttf derived needs no TimeToStartFailure/TimeToEndFailure"
                if set(missing) <= set(PUBLISHED_TTF_COLUMNS) else "")
        raise DataError(f"{path} row 1 (header): missing column(s) {', '.join(missing)}; "
                        f"found {', '.join(h or '(unnamed)' for h in header)}{hint}")
    if not rows:
        raise DataError(f"{path}: no data rows after the header (row 1)")
    channels = _channels(channels, max(var_cols), path)
    used = needed + [f"Var_Ch{c}" for c in channels]
    try:
        data = np.array(rows, dtype=np.float64)
    except ValueError:  # ragged rows or text: find it, slowly, only now
        data = None
    if data is None or data.ndim != 2 or data.shape[1] != len(header):
        col = _csv_columns_slowly(path, header, rows, used)
    else:
        col = {h: data[:, i] for i, h in enumerate(header)}
    _check_csv_values(path, header, rows, col, used, channels, zero_ok=features == "std")
    x = np.stack([features_lib.from_variance(col[f"Var_Ch{c}"], features) for c in channels],
                 axis=1)
    published = (col["TimeToStartFailure"], col["TimeToEndFailure"]) if ttf == "published" else None
    return _finish(name or _stem(path), path, col["Time"], x, channels, col["ShearStress"],
                   published, kind=features, **target_options)


def _csv_columns_slowly(path, header, rows, used):
    """The used columns as float64 when some row is ragged or some cell is text.

    Raises a DataError naming the first bad row (and column); text in a column
    the reader does not use is no error.
    """
    n = len(header)
    ragged = [i for i, r in enumerate(rows) if len(r) != n]
    index = {h: header.index(h) for h in used}
    time_col = index["Time"]

    def at(i):
        try:
            return f" (t = {_seconds(float(rows[i][time_col]))} s)"
        except (ValueError, IndexError):
            return ""

    if ragged:
        i = ragged[0]
        k = len(rows[i])
        if k < n:
            lost = ", ".join(h or "(unnamed)" for h in header[k:])
            what = (f"{k} of {n} fields, column(s) {lost} missing"
                    + (" (a truncated last row?)" if i == len(rows) - 1 else ""))
        else:
            what = f"{k} fields where the header has {n}"
        raise DataError(f"{path} row {row_text(i + 2)}{at(i)}: {what}"
                        f"{more_text(len(ragged) - 1, 'row')}")
    columns, bad = {}, []
    for h in used:
        j = index[h]
        cells = [r[j] for r in rows]
        try:
            columns[h] = np.array(cells, dtype=np.float64)
        except ValueError:
            bad += [(i, j) for i, c in enumerate(cells) if not _is_number(c)]
    if bad:
        i, j = min(bad)
        raise DataError(f"{path} row {row_text(i + 2)}{at(i)}, column {header[j]}: "
                        f"{rows[i][j]!r} is not a number{more_text(len(bad) - 1)}")
    return columns


def _check_csv_values(path, header, rows, col, used, channels, zero_ok=False):
    """NaN/Inf in a used column, variances <= 0 (< 0 for std), time that does not increase."""
    bad = []
    for h in used:
        rows_bad = np.flatnonzero(~np.isfinite(col[h]))
        bad += [(int(i), header.index(h), "not a finite number") for i in rows_bad]
    for c in channels:
        h = f"Var_Ch{c}"
        low = (col[h] < 0) if zero_ok else (col[h] <= 0)
        rows_bad = np.flatnonzero(np.isfinite(col[h]) & low)
        why = "a negative variance" if zero_ok else "not a positive variance"
        bad += [(int(i), header.index(h), why) for i in rows_bad]
    time, t = col["Time"], header.index("Time")
    if bad:
        i, j, why = min(bad)
        when = _at_time(time, i) if j != t else ""
        raise DataError(f"{path} row {row_text(i + 2)}{when}, column {header[j]}: "
                        f"{rows[i][j].strip()!r} is {why}{more_text(len(bad) - 1)}")
    step = np.diff(time)
    if not (step > 0).all():
        i = int(np.argmin(step > 0)) + 1
        raise DataError(f"{path} row {row_text(i + 2)}, column Time: {rows[i][t].strip()} does "
                        f"not come after the previous row's {rows[i - 1][t].strip()} "
                        "(time must increase)")


def read_npz(path, channels=None, name=None, features="logvar", **target_options):
    """A ``.npz`` with the keys documented in this module's docstring.

    Errors name the array and the index as numpy would, ``shear_stress[1501]``.
    """
    features_lib.check_kind(features)
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        with open(path, "rb") as f:
            magic = f.read(6)
        reason = (f"a damaged or truncated zip archive: {e}" if magic.startswith(b"PK")
                  else str(e) if magic == b"\x93NUMPY"
                  else "no zip signature; np.savez writes .npz")
        raise DataError(f"{path}: not a readable NumPy .npz archive ({reason})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DataError(f"{path}: a single array, not an .npz archive of time, logvar and "
                        "shear_stress (save with np.savez)")
    with archive as z:
        raw = "ae" in z.files and "logvar" not in z.files
        needed = ("time", "shear_stress", "ae_sample_rate") if raw else ("time", "logvar",
                                                                         "shear_stress")
        missing = [k for k in needed if k not in z.files]
        if missing:
            raise DataError(f"{path}: missing array(s) {', '.join(missing)}; "
                            f"found {', '.join(z.files) or 'none'}")
        arrays = {}
        for k in z.files:
            if k in ("time", "logvar", "shear_stress", "ttsf", "ttef", "ae_sample_rate", "ae_t0"):
                try:
                    arrays[k] = z[k]
                except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
                    raise DataError(f"{path}: array {k!r} cannot be read ({e})") from None
    if raw:
        return _read_npz_ae(path, arrays, channels, name, features, **target_options)
    time = _numeric(path, "time", arrays["time"]).reshape(-1)
    lengths = {k: len(v) for k, v in arrays.items() if np.ndim(v)}
    if len(set(lengths.values())) > 1 or len(lengths) < len(arrays):
        raise DataError(f"{path}: arrays differ in length: "
                        + ", ".join(f"{k} {np.shape(v)}" for k, v in arrays.items()))
    _check_finite(path, "time", time)
    _check_increasing(path, "time", time)
    logvar = _numeric(path, "logvar", arrays["logvar"], time).reshape(len(time), -1)
    channels = _channels(channels, logvar.shape[1], path)
    logvar = logvar[:, [c - 1 for c in channels]]
    _check_finite(path, "logvar", logvar, time)
    stress = _numeric(path, "shear_stress", arrays["shear_stress"], time)
    _check_finite(path, "shear_stress", stress, time)
    published = None
    if "ttsf" in arrays and "ttef" in arrays:
        published = tuple(_numeric(path, k, arrays[k], time) for k in ("ttsf", "ttef"))
    x = features_lib.from_logvar(logvar, features)
    return _finish(name or _stem(path), path, time, x, channels, stress, published,
                   kind=features, **target_options)


def _read_npz_ae(path, arrays, channels, name, features, window=0.1, hop=0.01,
                 **target_options):
    """The raw layout of an ``.npz``: ``ae`` streamed to features, ``shear_stress`` sampled
    at ``time`` and interpolated onto the window ends, as from HDF5."""
    if "ttsf" in arrays or "ttef" in arrays:
        raise DataError(f"{path}: ttsf/ttef (published labels per feature step) need the "
                        "logvar layout; with raw 'ae' the labels are derived from the stress")
    rate = _numeric(path, "ae_sample_rate", arrays["ae_sample_rate"]).reshape(-1)
    t0 = _numeric(path, "ae_t0", arrays.get("ae_t0", 0.0)).reshape(-1)
    if len(rate) != 1 or not rate[0] > 0 or len(t0) != 1 or not np.isfinite(t0[0]):
        raise DataError(f"{path}: ae_sample_rate must be one positive number and ae_t0 one "
                        f"finite number, got {arrays['ae_sample_rate']!r}, "
                        f"{arrays.get('ae_t0', 0.0)!r}")
    stress_time = _numeric(path, "time", arrays["time"]).reshape(-1)
    _check_finite(path, "time", stress_time)
    _check_increasing(path, "time", stress_time)
    stress = _numeric(path, "shear_stress", arrays["shear_stress"], stress_time).reshape(-1)
    if len(stress) != len(stress_time) or len(stress) < 2:
        raise DataError(f"{path}: shear_stress {stress.shape} and time {stress_time.shape} "
                        "must be one stress sample per time, two or more")
    _check_finite(path, "shear_stress", stress, stress_time)
    lv, values, channels = raw_ae.npz_ae_features(
        path, rate[0], lambda n: _channels(channels, n, path), window, hop, features)
    time, values, stress = _onto_windows(path, "time", lv.window_end_time(
        np.arange(len(values)), t0[0]), values, stress_time, stress)
    return _finish(name or _stem(path), path, time, values, channels, stress,
                   kind=features, **target_options)


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
        raise DataError(f"{path}: not a readable HDF5 file ({_h5_reason(e)})") from None
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
        stress = _numeric(path, "/mech/shear_stress", stress, stress_time)
        _check_finite(path, "/mech/shear_stress", stress, stress_time)
        name = name or str(f.attrs.get("name", _stem(path)))
        # A simulated file says how to make it again (evaluate names it when it is gone).
        simulator = {k: _plain(f.attrs[k]) for k in ("preset", "seed", "mode", "generator")
                     if k in f.attrs}
        if "features/logvar" in f:
            ds = f["features/logvar"]
            logvar = _h5_read(ds, path)
            logvar = logvar.reshape(len(logvar), -1) if logvar.ndim else logvar.reshape(1, 1)
            channels = _channels(channels, logvar.shape[1], path)
            time = _attr(ds, "t0", path) + _attr(ds, "hop", path, positive=True) * np.arange(
                len(logvar))
            logvar = _numeric(path, "/features/logvar", logvar[:, [c - 1 for c in channels]], time)
            _check_finite(path, "/features/logvar", logvar, time)
            if output != "logvar":
                logvar = (10.0 ** logvar if output == "var"
                          else features_lib.from_logvar(logvar, output))
        elif "ae" in f:
            ae = f["ae"]
            if ae.dtype.kind not in "iuf":
                raise DataError(f"{path}: dataset /ae holds {ae.dtype} values, not numbers")
            channels = _channels(channels, ae.shape[1] if ae.ndim == 2 else 1, path)
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
    time, logvar, stress = _onto_windows(path, "/mech/shear_stress", time, logvar,
                                         stress_time, stress)
    record = _finish(name, path, time, logvar, channels, stress, kind=output, **target_options)
    if "seed" in simulator:
        record.attrs["simulator"] = simulator
    return record


def _onto_windows(path, label, time, values, stress_time, stress):
    """Keep the windows (ending at ``time``) inside the stress record; interpolate the
    stress onto them, so a step's target never comes from after the AE it has seen."""
    # t0 + hop * k rounds up past a stress sample on the same instant (1e-15 s); a
    # microsecond of slack keeps that window, far below any hop or sample interval.
    slack = 1e-6
    inside = (time >= stress_time[0] - slack) & (time <= stress_time[-1] + slack)
    if not inside.any():
        raise DataError(f"{path}: the AE feature times ({_seconds(time[0]) if len(time) else '-'}"
                        f"..{_seconds(time[-1]) if len(time) else '-'} s) do not overlap "
                        f"{label} ({_seconds(stress_time[0])}..{_seconds(stress_time[-1])} s)")
    time = time[inside]
    return time, values[inside], np.interp(time, stress_time, stress)


def _plain(value):
    if isinstance(value, bytes):
        return value.decode()
    return value.item() if hasattr(value, "item") else value


def _h5_reason(err):
    """h5py's 'Unable to synchronously open file (file signature not found)' → the reason."""
    text = str(err)
    return text[text.find("(") + 1:text.rfind(")")] if "(" in text else text


def _h5_read(ds, path):
    try:
        return ds[...]
    except (OSError, RuntimeError, TypeError, ValueError) as e:
        raise DataError(f"{path}: dataset {ds.name} cannot be read ({_h5_reason(e)})") from None


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
        raise DataError(f"{path}: unknown record format {suffix!r} (known: {sorted(READERS)})")
    if os.path.isdir(path):
        raise DataError(f"{path}: a folder, not a record file")
    if os.path.getsize(path) == 0:
        raise DataError(f"{path}: empty file (0 bytes)")
    return READERS[suffix](path, **options)
