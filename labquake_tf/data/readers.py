"""Readers: DDS CSV, HDF5 (layout in CONTRIBUTING.md; ``data.hdf5_reader``) and NumPy
``.npz`` → ``Record``, dispatched on the suffix by ``read``.

Every reader ends in ``checks.finish`` (``targets.build_targets``) so all formats share one
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
import io
import os
import zipfile

import numpy as np

from labquake_tf.data import checks
from labquake_tf.data import features as features_lib
from labquake_tf.data import raw_ae
from labquake_tf.data.hdf5_reader import read_hdf5
from labquake_tf.errors import DataError, UsageError, more_text, row_text

DDS_COLUMNS = ("Time", "ShearStress")
PUBLISHED_TTF_COLUMNS = ("TimeToStartFailure", "TimeToEndFailure")


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
    channels = checks.pick_channels(channels, max(var_cols), path)
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
    return checks.finish(name or checks.stem(path), path, col["Time"], x, channels,
                         col["ShearStress"], published, kind=features, **target_options)


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
            return f" (t = {checks.seconds(float(rows[i][time_col]))} s)"
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
            bad += [(i, j) for i, c in enumerate(cells) if not checks.is_number(c)]
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
        when = checks.at_time(time, i) if j != t else ""
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
    time = checks.numeric(path, "time", arrays["time"]).reshape(-1)
    lengths = {k: len(v) for k, v in arrays.items() if np.ndim(v)}
    if len(set(lengths.values())) > 1 or len(lengths) < len(arrays):
        raise DataError(f"{path}: arrays differ in length: "
                        + ", ".join(f"{k} {np.shape(v)}" for k, v in arrays.items()))
    checks.check_finite(path, "time", time)
    checks.check_increasing(path, "time", time)
    logvar = checks.numeric(path, "logvar", arrays["logvar"], time).reshape(len(time), -1)
    channels = checks.pick_channels(channels, logvar.shape[1], path)
    logvar = logvar[:, [c - 1 for c in channels]]
    checks.check_finite(path, "logvar", logvar, time)
    stress = checks.numeric(path, "shear_stress", arrays["shear_stress"], time)
    checks.check_finite(path, "shear_stress", stress, time)
    published = None
    if "ttsf" in arrays and "ttef" in arrays:
        published = tuple(checks.numeric(path, k, arrays[k], time) for k in ("ttsf", "ttef"))
    x = features_lib.from_logvar(logvar, features)
    return checks.finish(name or checks.stem(path), path, time, x, channels, stress, published,
                   kind=features, **target_options)


def _read_npz_ae(path, arrays, channels, name, features, window=0.1, hop=0.01,
                 **target_options):
    """The raw layout of an ``.npz``: ``ae`` streamed to features, ``shear_stress`` sampled
    at ``time`` and interpolated onto the window ends, as from HDF5."""
    if "ttsf" in arrays or "ttef" in arrays:
        raise DataError(f"{path}: ttsf/ttef (published labels per feature step) need the "
                        "logvar layout; with raw 'ae' the labels are derived from the stress")
    rate = checks.numeric(path, "ae_sample_rate", arrays["ae_sample_rate"]).reshape(-1)
    t0 = checks.numeric(path, "ae_t0", arrays.get("ae_t0", 0.0)).reshape(-1)
    if len(rate) != 1 or not rate[0] > 0 or len(t0) != 1 or not np.isfinite(t0[0]):
        raise DataError(f"{path}: ae_sample_rate must be one positive number and ae_t0 one "
                        f"finite number, got {arrays['ae_sample_rate']!r}, "
                        f"{arrays.get('ae_t0', 0.0)!r}")
    stress_time = checks.numeric(path, "time", arrays["time"]).reshape(-1)
    checks.check_finite(path, "time", stress_time)
    checks.check_increasing(path, "time", stress_time)
    stress = checks.numeric(path, "shear_stress", arrays["shear_stress"], stress_time).reshape(-1)
    if len(stress) != len(stress_time) or len(stress) < 2:
        raise DataError(f"{path}: shear_stress {stress.shape} and time {stress_time.shape} "
                        "must be one stress sample per time, two or more")
    checks.check_finite(path, "shear_stress", stress, stress_time)
    lv, values, channels = raw_ae.npz_ae_features(
        path, rate[0], lambda n: checks.pick_channels(channels, n, path), window, hop, features)
    time, values, stress = checks.onto_windows(path, "time", lv.window_end_time(
        np.arange(len(values)), t0[0]), values, stress_time, stress)
    return checks.finish(name or checks.stem(path), path, time, values, channels, stress,
                   kind=features, **target_options)


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
