"""Raw records in any column layout (``--columns``), read in chunks of steps.

``--columns ae=acoustic_data,ttf=time_to_failure,rate=4e6`` names the columns of a
CSV, a Parquet file or an HDF5 file (HDF5: dataset paths) holding one row per AE
sample: ``ae`` the raw AE (``+`` joins channels: ``ae=ch1+ch2``), ``rate`` the sample
rate in Hz, and the targets present, any of ``stress`` (shear stress, MPa), ``ttf``
(time to failure, s: the TTsF target) and ``ttef`` (time to the end of failure, s).
The LANL earthquake-prediction layout is ``acoustic_data`` + ``time_to_failure``.

A record is never loaded whole. Step ``k`` (window END ``(k * hop + window) / rate``)
is the log-variance of samples ``[k * hop, k * hop + window)``; a chunk of steps
``[k0, k1)`` reads samples ``[k0 * hop, (k1 - 1) * hop + window)``, so consecutive
chunks overlap by ``window - hop`` samples, exactly what their edge windows need,
and each chunk's windows equal the ones a single pass would give (integer AE:
bit for bit). ``data.beam`` computes the chunks in parallel; ``read`` here computes
them one after another, with the same function. Targets are taken at each
window's last sample (the model never sees a label from after its input).

With a stress column, events, filtering and the train-fitted trend come from
``targets.build_targets`` as for every other reader. Without one, events are the
failures the TTF column counts down to: step ``i`` is an event (onset = end) when
the TTF rises after it (the next cycle's countdown starts).
"""

import io
import os
import re

import numpy as np

from labquake_tf.data import features as features_lib
from labquake_tf.data import checks, hdf5_reader
from labquake_tf.data.record import Record
from labquake_tf.errors import DataError, UsageError, row_text

KEYS = ("ae", "stress", "ttf", "ttef", "rate")
TARGET_KEYS = {"stress": "shear_stress", "ttf": "ttsf", "ttef": "ttef"}
CHUNK_SAMPLES = 1 << 23
"""Raw samples a chunk reads at most (plus the window overlap): 16 MiB of int16 per channel."""
_CSV_BLOCK = 1 << 24


def parse(text):
    """``"ae=acoustic_data,ttf=time_to_failure,rate=4e6"`` → ``{"ae": [...], "ttf": ..., "rate": 4e6}``."""
    if isinstance(text, dict):
        return text
    out = {}
    for item in str(text).split(","):
        key, sep, value = (s.strip() for s in item.partition("="))
        if not sep or not value or key not in KEYS:
            raise UsageError(f"--columns: expected KEY=COLUMN pairs with keys {', '.join(KEYS)} "
                             f"(e.g. ae=acoustic_data,ttf=time_to_failure,rate=4e6); got {item!r}")
        out[key] = value
    if "ae" not in out or "rate" not in out:
        raise UsageError(f"--columns: needs ae=COLUMN and rate=HZ; got {text!r}")
    try:
        out["rate"] = float(out["rate"])
    except ValueError:
        out["rate"] = float("nan")
    if not np.isfinite(out["rate"]) or out["rate"] <= 0:
        raise UsageError(f"--columns: rate must be a positive number of Hz, got {text!r}")
    if not any(k in out for k in TARGET_KEYS):
        raise UsageError(f"--columns: name at least one target column (stress, ttf, ttef); "
                         f"got {text!r}")
    out["ae"] = [c.strip() for c in out["ae"].split("+")]
    return out


def open_source(path, columns):
    """The file's reader of sample rows: ``n_rows`` and ``read(r0, r1)``."""
    path = os.fspath(path)
    suffix = os.path.splitext(path)[1].lower()
    kinds = {".csv": CsvSource, ".parquet": ParquetSource, ".pq": ParquetSource,
             ".h5": Hdf5Source, ".hdf5": Hdf5Source}
    if suffix not in kinds:
        raise DataError(f"{path}: --columns reads .csv, .parquet and .h5 files, not {suffix!r}")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file")
    if os.path.getsize(path) == 0:
        raise DataError(f"{path}: empty file (0 bytes)")
    return kinds[suffix](path, parse(columns))


class _Source:
    check_finite = True
    """False: NaN AE reaches the windows, and the record's reader names the window (what
    ``read_hdf5`` reports for a labquake HDF5 ``/ae``, which ``data.beam`` reads here)."""

    def __init__(self, path, columns):
        self.path, self.columns = path, columns
        self.names = {k: v for k, v in columns.items() if k != "rate"}

    def _missing(self, found):
        wanted = list(self.columns["ae"]) + [v for k, v in self.names.items() if k != "ae"]
        missing = [c for c in wanted if c not in found]
        if missing:
            raise DataError(f"{self.path}: missing column(s) {', '.join(missing)}; found "
                            f"{', '.join(found) or 'none'} (--columns names them)")

    def _split(self, ae, others, r0):
        """``{"ae": (n, n_ae), "ttf": (n,), ...}``, every value checked finite."""
        out = {"ae": ae, **{k: others[n] for k, n in self.names.items() if k != "ae"}}
        for key, values in out.items() if self.check_finite else ():
            bad = np.argwhere(~np.isfinite(values))
            if len(bad):
                row = int(bad[0][0])
                if key != "ae":
                    col = self.names[key]
                elif len(self.columns["ae"]) == ae.shape[1]:
                    col = self.columns["ae"][int(bad[0][1])]
                else:
                    col = f"{self.columns['ae'][0]} channel {int(bad[0][1]) + 1}"
                raise DataError(f"{self.path} {self._row(r0 + row)}, column {col}: "
                                f"{values[tuple(bad[0])]} is not a finite number")
        return out

    def _row(self, r):
        return f"row {row_text(r)}"


class CsvSource(_Source):
    """A CSV with a header row. Rows are found through the byte offset of every
    ``stride``-th data row (one scan at open: an index the size of the step grid)."""

    def __init__(self, path, columns, stride=4096):
        super().__init__(path, columns)
        self.stride = int(stride)
        with open(path, "rb") as f:
            header = f.readline()
            self.header = [h.strip().strip('"') for h in header.decode("utf-8-sig", "replace")
                           .strip().split(",")]
            self._missing(self.header)
            offsets, n, pos = [], 0, len(header)
            at_row_start = True  # the previous block ended a line
            while True:
                block = f.read(_CSV_BLOCK)
                if not block:
                    break
                ends = np.flatnonzero(np.frombuffer(block, np.uint8) == 10)
                starts = np.concatenate([np.zeros(int(at_row_start), np.int64), ends + 1])
                starts = starts[starts < len(block)]
                idx = n + np.arange(len(starts))
                offsets.extend((pos + starts[idx % self.stride == 0]).tolist())
                n += len(starts)
                at_row_start = block.endswith(b"\n")
                pos += len(block)
            self.offsets = np.asarray(offsets, np.int64)
            self.size = pos
        self.n_rows = n
        self.usecols = [self.header.index(c) for c in
                        dict.fromkeys(list(columns["ae"]) +
                                      [v for k, v in self.names.items() if k != "ae"])]

    def _row(self, r):
        return f"row {row_text(r + 2)}"  # as an editor numbers lines: header is row 1

    def read(self, r0, r1):
        if r1 <= r0:
            return None
        lo = self.offsets[r0 // self.stride]
        last = -(-r1 // self.stride)
        hi = self.offsets[last] if last < len(self.offsets) else self.size
        with open(self.path, "rb") as f:
            f.seek(lo)
            text = f.read(hi - lo)
        skip = r0 % self.stride
        if skip:  # from the indexed row to row r0
            text = text[int(np.flatnonzero(np.frombuffer(text, np.uint8) == 10)[skip - 1]) + 1:]
        try:
            # one buffer, parsed by numpy's C reader: no Python object per row
            data = np.loadtxt(io.BytesIO(text), delimiter=",", usecols=self.usecols,
                              dtype=np.float64, ndmin=2, max_rows=r1 - r0, encoding="latin-1")
        except ValueError as e:
            m = re.search(r"at row (\d+), column (\d+)", str(e))
            # numpy counts rows from 0, columns from 1
            where = (f"{self._row(r0 + int(m.group(1)))}, column "
                     f"{self.header[self.usecols[int(m.group(2)) - 1]]}") if m else \
                f"rows {row_text(r0 + 2)}..{row_text(r1 + 1)}"
            why = str(e).split(" at row")[0]
            raise DataError(f"{self.path} {where}: {why} (not a number, or a short row)") \
                from None
        if len(data) != r1 - r0:
            raise DataError(f"{self.path} {self._row(r0 + len(data))}: the file ends early "
                            f"(expected {row_text(self.n_rows)} rows)")
        by_name = {self.header[c]: data[:, i] for i, c in enumerate(self.usecols)}
        return self._split(np.stack([by_name[c] for c in self.columns["ae"]], axis=1),
                           by_name, r0)


class ParquetSource(_Source):
    """Parquet through pyarrow, one row group at a time."""

    def __init__(self, path, columns):
        super().__init__(path, columns)
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise UsageError(f"{path}: reading Parquet needs pyarrow "
                             "(pip install labquake_tf[beam] brings it)") from None
        try:
            self.file = pq.ParquetFile(path)
        except Exception as e:  # noqa: BLE001 -- pyarrow raises ArrowInvalid/OSError variants
            raise DataError(f"{path}: not a readable Parquet file ({' '.join(str(e).split())})") \
                from None
        self._missing(self.file.schema_arrow.names)
        meta = self.file.metadata
        sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
        self.bounds = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.n_rows = int(self.bounds[-1])
        self.wanted = list(dict.fromkeys(list(columns["ae"]) +
                                         [v for k, v in self.names.items() if k != "ae"]))

    def __getstate__(self):  # a Beam worker reopens the file
        state = dict(self.__dict__)
        state.pop("file")
        return state

    def __setstate__(self, state):
        import pyarrow.parquet as pq

        self.__dict__.update(state)
        self.file = pq.ParquetFile(self.path)

    def read(self, r0, r1):
        parts = {c: [] for c in self.wanted}
        g0 = int(np.searchsorted(self.bounds, r0, side="right")) - 1
        for g in range(g0, len(self.bounds) - 1):
            b0, b1 = self.bounds[g], self.bounds[g + 1]
            if b0 >= r1:
                break
            table = self.file.read_row_group(g, columns=self.wanted)
            for c in self.wanted:
                col = table.column(c).to_numpy()
                if col.dtype.kind not in "biuf":
                    raise DataError(f"{self.path}: column {c} holds {col.dtype} values, "
                                    "not numbers")
                parts[c].append(col[max(r0, b0) - b0:min(r1, b1) - b0].astype(np.float64))
        cols = {c: np.concatenate(v) for c, v in parts.items()}
        return self._split(np.stack([cols[c] for c in self.columns["ae"]], axis=1), cols, r0)


class Hdf5Source(_Source):
    """HDF5 datasets by path (``ae=/ae`` may be one (n, n_channels) dataset)."""

    def __init__(self, path, columns):
        import h5py

        super().__init__(path, columns)
        try:
            with h5py.File(path, "r") as f:
                found = []
                f.visititems(lambda n, o: found.append("/" + n)
                             if isinstance(o, h5py.Dataset) else None)
                names = {c: "/" + c.lstrip("/") for c in
                         list(columns["ae"]) + [v for k, v in self.names.items() if k != "ae"]}
                missing = [c for c, n in names.items() if n not in found]
                if missing:
                    raise DataError(f"{path}: missing dataset(s) {', '.join(missing)}; found "
                                    f"{', '.join(found) or 'no datasets'} (--columns names them)")
                lengths = {c: f[n].shape[0] if f[n].ndim else 0 for c, n in names.items()}
        except OSError as e:
            raise DataError(f"{path}: not a readable HDF5 file "
                            f"({hdf5_reader.h5_reason(e)})") from None
        if len(set(lengths.values())) != 1:
            raise DataError(f"{path}: datasets differ in length: "
                            + ", ".join(f"{c} {n}" for c, n in lengths.items()))
        self.datasets = names
        self.n_rows = int(next(iter(lengths.values())))

    def read(self, r0, r1):
        import h5py

        with h5py.File(self.path, "r") as f:
            # integer AE keeps its dtype: exact sums, as read_hdf5 computes them
            ae = [f[self.datasets[c]][r0:r1] for c in self.columns["ae"]]
            ae = np.concatenate([a.reshape(len(a), -1) for a in ae], axis=1)
            others = {n: np.asarray(f[self.datasets[n]][r0:r1], np.float64).reshape(-1)
                      for k, n in self.names.items() if k != "ae"}
        return self._split(ae, others, r0)


def step_chunks(n_rows, lv, chunk_samples=CHUNK_SAMPLES):
    """``[(k0, k1), ...]``: the record's windows in chunks of about ``chunk_samples``."""
    n_windows = (n_rows - lv.window) // lv.hop + 1 if n_rows >= lv.window else 0
    per = max(1, int(chunk_samples) // lv.hop)
    return [(k0, min(k0 + per, n_windows)) for k0 in range(0, n_windows, per)]


def chunk_rows(k0, k1, lv):
    """The sample rows ``[r0, r1)`` the windows ``[k0, k1)`` read."""
    return k0 * lv.hop, (k1 - 1) * lv.hop + lv.window


def chunk_steps(source, k0, k1, lv_args, channels, workers=1):
    """Windows ``[k0, k1)`` of ``source``: ``(features (k1-k0, n_ch) float32, {key: values
    at each window's last sample})``. ``lv_args``: ``LogVariance``'s arguments; ``workers``
    its threads (one per Beam worker; every core when chunks run one after another)."""
    lv = features_lib.LogVariance(*lv_args, workers=workers)
    r0, r1 = chunk_rows(k0, k1, lv)
    rows = source.read(r0, r1)
    ae = rows["ae"][:, [c - 1 for c in channels]]
    # Integer-valued AE (ADC counts read from text) becomes integer again: exact sums.
    if ae.dtype.kind == "f" and np.all(ae == np.round(ae)) and \
            np.abs(ae).max(initial=0) < 2 ** 31:
        ae = ae.astype(np.int32 if np.abs(ae).max(initial=0) >= 2 ** 15 else np.int16)
    feats = lv.update(ae)
    last = (np.arange(k1 - k0) * lv.hop + lv.window - 1)
    picks = {k: v[last] for k, v in rows.items() if k != "ae"}
    return feats, picks


def lv_args(columns, window, hop, output):
    return (parse(columns)["rate"], window, hop, output)


def read(path, columns, channels=None, name=None, window=0.1, hop=0.01, features="logvar",
         output=None, chunk_samples=CHUNK_SAMPLES, **target_options):
    """A ``Record`` from a raw record in a column layout (see the module docstring)."""
    output = output or features
    features_lib.check_kind(output)
    columns = parse(columns)
    source = open_source(path, columns)
    lv = features_lib.LogVariance(*lv_args(columns, window, hop, output))
    channels = checks.pick_channels(channels, len(columns["ae"]), path)
    parts = [chunk_steps(source, k0, k1, lv_args(columns, window, hop, output), channels,
                         workers=None) for k0, k1 in step_chunks(source.n_rows, lv, chunk_samples)]
    return finish(path, columns, parts, channels, name=name, window=window, hop=hop,
                  output=output, **target_options)


def finish(path, columns, parts, channels, name=None, window=0.1, hop=0.01, output="logvar",
           **target_options):
    """The ``Record`` from the chunks' ``(features, picks)`` in step order."""
    columns = parse(columns)
    lv = features_lib.LogVariance(*lv_args(columns, window, hop, output))
    if not parts:
        raise DataError(f"{path}: fewer AE samples than one window ({lv.window} at "
                        f"{columns['rate']:g} Hz); a record needs at least {checks.MIN_ROWS} "
                        "windows")
    x = np.concatenate([p[0] for p in parts])
    picks = {k: np.concatenate([p[1][k] for p in parts]) for k in parts[0][1]}
    time = lv.window_end_time(np.arange(len(x)))
    name = name or checks.stem(path)
    published = (picks["ttf"], picks["ttef"]) if "ttf" in picks and "ttef" in picks else None
    if "stress" in picks:
        target_options.pop("ttf", None)
        record = checks.finish(name, path, time, x, channels, picks["stress"], published,
                               kind=output, **target_options)
    else:
        record = _ttf_record(name, path, time, x, channels, picks, output)
    record.attrs["columns"] = {k: v for k, v in columns.items()}
    return record


def _ttf_record(name, path, time, x, channels, picks, kind):
    """A record without stress: events where the time-to-failure countdown restarts."""
    if len(time) < checks.MIN_ROWS:
        raise DataError(f"{path}: {len(time)} windows of AE; a record needs at least "
                        f"{checks.MIN_ROWS} (and three failures to split)")
    checks.check_finite(path, f"AE {kind}", x, time)
    key = "ttf" if "ttf" in picks else "ttef"
    ttf = picks[key]
    at = np.flatnonzero(np.diff(ttf) > 0)
    events = np.stack([at, at], axis=1).astype(np.int64)
    targets = {TARGET_KEYS[k]: picks[k] for k in ("ttf", "ttef") if k in picks}
    masks = {t: np.isfinite(v) for t, v in targets.items()}
    dt = float(np.median(np.diff(time)))
    attrs = {"sample_rate": 1.0 / dt, "ttf": "published", "events_from": f"{key} resets",
             "lowpass_applied": False, "detrend": False}
    return Record(name=name, time=time, features=np.asarray(x, np.float32),
                  feature_names=[f"{kind}_ch{c}" for c in channels], targets=targets,
                  label_mask=masks, events=events, source=os.path.abspath(path),
                  sha256=checks.sha256(path), attrs=attrs)
