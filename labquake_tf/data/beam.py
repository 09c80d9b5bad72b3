"""``labquake prepare --runner beam``: the same shards, from many records, on Apache Beam.

``pip install labquake_tf[beam]``. Nothing else in the package imports this module,
so the default install never imports Beam.

One pipeline for all the records given (a glob, a comma-separated list, registry
names), each step a function the local ``prepare`` uses too, so the output is the
local output by construction:

1. **chunks** (parallel): a raw record (``--columns``, or an HDF5 with ``/ae``) is
   cut into chunks of steps that overlap by ``window - hop`` samples, exactly what
   the edge windows need (``columns.chunk_rows``); each chunk's windowed features
   and its targets at the window ends are ``columns.chunk_steps``. A record that is
   already features (DDS CSV, ``.npz``, ``/features/logvar``) is one task.
2. **combine** (per record): the chunks in step order make the ``Record`` through the
   reader the local ``prepare`` uses (``columns.finish``, ``readers.read_hdf5`` with
   ``ae_features``), which low-passes the stress over the whole record and fits the
   trend, event threshold, events and splits on the training part; then
   ``prepare.plan`` fits the scalers and lists the shards. Only the step grid is
   held here (``hop`` samples make one step: 1/40000 of the raw at 4 MHz), and its
   arrays are staged as ``.npy`` for the writers to memory-map.
3. **shards** (parallel): ``prepare.write_shard``, each written under a temporary name
   and renamed, so a bundle that Beam retries after a worker died writes the same file.
4. **manifest**: ``prepare.finish_manifest``.

Everything goes into a staging folder beside ``--out``, renamed into place only when
every record succeeded; a bad record fails with the local ``prepare``'s one-line
error (the first bad chunk's, as the sequential reader would meet it) and nothing is
written. ``--out`` must be a filesystem every worker sees (one machine, NFS, a
mounted bucket).
"""

import glob
import os
import shutil
import tempfile

import numpy as np

from labquake_tf.data import columns as columns_lib
from labquake_tf.data import features as features_lib
from labquake_tf.data import shards
from labquake_tf.data import checks, readers, registry, splits
from labquake_tf.errors import DataError, LabquakeError, UsageError
from labquake_tf.files import MANIFEST_FILE, read_json, write_json

RUNNERS = {"beam": "DirectRunner", "direct": "DirectRunner", "flink": "FlinkRunner",
           "spark": "SparkRunner", "dataflow": "DataflowRunner"}
_USER_ERRORS = (LabquakeError, OSError, ValueError)
"""What a record's reader or the plan raise for bad input: passed to the driver as the local
``prepare`` raises it. Anything else is a bug and fails the pipeline with its traceback."""
_ERRORS = {c.__name__: c for c in (DataError, UsageError, FileNotFoundError, FileExistsError,
                                   PermissionError, IsADirectoryError, OSError, ValueError)}


def import_beam():
    try:
        import apache_beam as beam
    except ImportError:
        raise UsageError("--runner beam needs Apache Beam: pip install 'labquake_tf[beam]'") \
            from None
    return beam


def expand(datasets):
    """Record paths or names from a glob, a comma-separated list, or a list of either."""
    items = datasets if isinstance(datasets, (list, tuple)) else str(datasets).split(",")
    found = []
    for item in (str(i).strip() for i in items):
        if not item:
            continue
        if item in registry.DATASETS or os.path.exists(item):
            found.append(item)
            continue
        matches = sorted(glob.glob(item))
        if not matches:
            raise FileNotFoundError(f"{item}: neither a file, a glob that matches one, nor a "
                                    f"dataset name (known: {', '.join(registry.DATASETS)})")
        found += matches
    return list(dict.fromkeys(found))


def out_dirs(records, out):
    """One record: ``out``; several: ``out/<file stem or name>``."""
    if len(records) == 1:
        return [out]
    stems = [os.path.splitext(os.path.basename(r))[0] for r in records]
    dup = sorted({s for s in stems if stems.count(s) > 1})
    if dup:
        raise UsageError(f"records share the name(s) {dup}: their output folders under {out} "
                         "would collide; prepare them in separate runs")
    return [os.path.join(out, s) for s in stems]


def pipeline_options(runner="beam", beam_args=(), workers=None):
    """Beam's options: the DirectRunner with ``workers`` processes unless told otherwise."""
    from apache_beam.options.pipeline_options import PipelineOptions

    args = list(beam_args)
    runner_name = RUNNERS.get(runner, runner)
    if not any(a == "--runner" or a.startswith("--runner=") for a in args):
        args.append(f"--runner={runner_name}")
    if runner_name == "DirectRunner":
        if not any(a.startswith("--direct_num_workers") for a in args):
            args.append(f"--direct_num_workers={workers or os.cpu_count() or 1}")
        if not any(a.startswith("--direct_running_mode") for a in args):
            args.append("--direct_running_mode=multi_processing")
    if not any(a.startswith("--default_sdk_harness_log_level") for a in args):
        args.append("--default_sdk_harness_log_level=WARNING")  # workers' INFO lines
    options = PipelineOptions(args)
    known = options.get_all_options()
    unknown = [a for a in args if a.startswith("--")
               and a[2:].split("=", 1)[0].replace("-", "_") not in known]
    if unknown:  # Beam only logs these and drops them: a typo would pass unseen
        raise UsageError(f"unknown option(s) {' '.join(unknown)}: neither labquake prepare's "
                         "nor Beam's (see 'labquake prepare --help' and Beam's pipeline options)")
    return options


def prepare(datasets, out, runner="beam", beam_args=(), workers=None, seq_len=None,
            targets=None, split=splits.PRETRAIN_RATIOS, channels=None, force=False,
            chunk_len=shards.CHUNK_LEN, records_per_shard=shards.RECORDS_PER_SHARD,
            features="logvar", chunk_samples=columns_lib.CHUNK_SAMPLES, **record_options):
    """Prepare every record of ``datasets`` as the local ``prepare`` would; returns the
    manifests in record order (one record: into ``out``, several: ``out/<stem>``)."""
    beam = import_beam()
    ratios = shards.check_request(targets, split, features)
    records = expand(datasets)
    if not records:
        raise UsageError(f"--dataset {datasets!r}: no records")
    dirs = [os.path.abspath(d) for d in out_dirs(records, out)]
    # Staged beside the output, so the final renames stay on one filesystem.
    parent = os.path.dirname(dirs[0]) if len(records) == 1 else os.path.abspath(out)
    made = not os.path.exists(parent)
    os.makedirs(parent, exist_ok=True)
    stage = tempfile.mkdtemp(prefix=".prepare-beam-", dir=parent)
    params = {"records": records, "seq_len": seq_len, "targets": targets, "ratios": ratios,
              "channels": channels, "features": features, "chunk_len": chunk_len,
              "records_per_shard": records_per_shard, "chunk_samples": chunk_samples,
              "options": record_options, "stage": stage}
    try:
        with beam.Pipeline(options=pipeline_options(runner, beam_args, workers)) as p:
            _build(beam, p, list(enumerate(records)), params)
        for i in range(len(records)):  # the first bad record, as a sequential run meets it
            path = os.path.join(stage, f"{i}.error")
            if os.path.exists(path):
                with open(path) as f:
                    kind, _, message = f.read().partition("\n")
                raise _ERRORS.get(kind, DataError)(message)
        manifests, fresh = [], []
        for i, d in enumerate(dirs):
            manifest = read_json(os.path.join(stage, str(i), MANIFEST_FILE))
            done = shards.existing(d, manifest["request"], force)
            manifests.append(manifest if done is None else done)
            fresh.append(done is None)
        for i, d in enumerate(dirs):  # every record succeeded: move them into place
            if not fresh[i]:
                continue  # the same request was prepared there already
            if os.path.exists(d):
                shutil.rmtree(d)
            os.makedirs(os.path.dirname(d), exist_ok=True)
            os.replace(os.path.join(stage, str(i)), d)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        if made and not os.listdir(parent):  # a failed run leaves no trace
            os.rmdir(parent)
    return manifests


def _build(beam, p, records, params):
    computed = (p | "records" >> beam.Create(records)
                | "plan chunks" >> beam.FlatMap(_tasks, params)
                | "spread chunks" >> beam.Reshuffle()
                | "features and targets" >> beam.Map(_compute, params))
    combined = (computed | "by record" >> beam.GroupByKey()
                | "fit on train" >> beam.FlatMap(_combine, params).with_outputs("job",
                                                                                main="shard"))
    written = (combined.shard | "spread shards" >> beam.Reshuffle()
               | "write shards" >> beam.Map(_write, params))
    _ = ({"job": combined.job, "written": written} | "shards by record" >> beam.CoGroupByKey()
         | "manifest" >> beam.Map(_manifest, params))


def _record_args(params):
    return dict(channels=params["channels"], features=params["features"],
                fit_split=params["ratios"], **params["options"])


def _tasks(item, params):
    """``(i, task)`` for each chunk of record ``i`` (``("whole",)`` for a feature record)."""
    i, dataset = item
    try:
        raw = _raw_source(dataset, params)
    except _USER_ERRORS as e:  # reported as the local prepare reports it
        yield i, ("error", 0, *_error(e))
        return
    if raw is None:
        yield i, ("whole",)
        return
    source, lv_args, channels = raw
    lv = features_lib.LogVariance(*lv_args)
    chunks = columns_lib.step_chunks(source.n_rows, lv, params["chunk_samples"])
    for k0, k1 in chunks:
        yield i, ("chunk", k0, k1, source, lv_args, channels)
    if not chunks:
        yield i, ("empty",)


def _raw_source(dataset, params):
    """``(source, LogVariance args, channels)`` for a raw record, else None."""
    options = params["options"]
    path = registry.dataset_path(dataset) if dataset in registry.DATASETS else dataset
    window, hop = options.get("window", 0.1), options.get("hop", 0.01)
    output = options.get("output") or params["features"]
    if options.get("columns"):
        cols = columns_lib.parse(options["columns"])
        source = columns_lib.open_source(path, cols)
        channels = checks.pick_channels(params["channels"], len(cols["ae"]), path)
        return source, columns_lib.lv_args(cols, window, hop, output), channels
    if os.path.splitext(str(path))[1].lower() not in (".h5", ".hdf5"):
        return None
    import h5py

    try:
        with h5py.File(path, "r") as f:
            if "features/logvar" in f or "ae" not in f or f.attrs.get("format") != \
                    "labquake-hdf5":
                return None
            ae = f["ae"]
            rate, n_ch = float(ae.attrs["sample_rate"]), ae.shape[1] if ae.ndim == 2 else 1
    except (OSError, KeyError, TypeError, ValueError):
        rate = float("nan")
    if not np.isfinite(rate) or rate <= 0:
        return None  # read_hdf5 in the combine step says what is wrong, as locally
    source = columns_lib.Hdf5Source(path, {"ae": ["ae"], "rate": rate})
    source.check_finite = False  # read_hdf5 reports a bad window, as locally
    return source, (rate, window, hop, output), checks.pick_channels(params["channels"], n_ch, path)


def _compute(item, params):
    i, task = item
    if task[0] != "chunk":
        return i, task
    _, k0, k1, source, lv_args, channels = task
    try:
        return i, ("chunk", k0, *columns_lib.chunk_steps(source, k0, k1, lv_args, channels))
    except _USER_ERRORS as e:
        return i, ("error", k0, *_error(e))


def _error(err):
    return type(err).__name__, " ".join(str(err).split())


def _combine(item, params):
    """All chunks of one record → the Record, the plan, staged arrays; yields shard tasks."""
    import apache_beam as beam

    i, parts = item
    parts = list(parts)
    errors = sorted((p for p in parts if p[0] == "error"), key=lambda p: p[1])
    try:
        if errors:
            raise _ERRORS.get(errors[0][2], DataError)(errors[0][3])
        record = _record(params, parts, i)
        job = shards.plan(record, record.dataset_arg, seq_len=params["seq_len"],
                               targets=params["targets"], ratios=params["ratios"],
                               channels=params["channels"], features=params["features"],
                               chunk_len=params["chunk_len"],
                               records_per_shard=params["records_per_shard"],
                               record_options=params["options"])
        shards.check_parts(job, record, record.dataset_arg)
    except _USER_ERRORS as e:  # one line for the driver, as the local prepare
        kind, message = _error(e)
        with open(os.path.join(params["stage"], f"{i}.error"), "w") as f:
            f.write(f"{kind}\n{message}")
        return
    staged = os.path.join(params["stage"], f"{i}.record")
    _stage(record, job["targets"], staged)
    yield beam.pvalue.TaggedOutput("job", (i, job))
    for shard in job["shards"]:
        yield i, (staged, job, shard)


def _record(params, parts, i):
    """The ``Record`` the local reader would make, from the computed chunks."""
    dataset = params["records"][i]
    args = _record_args(params)
    if any(p[0] == "whole" for p in parts):
        record = registry.load_record(dataset, **args)
    else:
        path = registry.dataset_path(dataset) if dataset in registry.DATASETS else dataset
        name = dataset if dataset in registry.DATASETS else None
        pieces = [(p[2], p[3]) for p in sorted((p for p in parts if p[0] == "chunk"),
                                               key=lambda p: p[1])]
        output = args.get("output") or params["features"]
        if params["options"].get("columns"):
            opts = {k: v for k, v in args.items()
                    if k not in ("channels", "features", "columns", "output")}
            record = columns_lib.finish(path, params["options"]["columns"], pieces,
                                        _channels(params, path), name=name, output=output,
                                        **opts)
        else:
            feats = np.concatenate([p[0] for p in pieces]) if pieces else np.zeros((0, 1))
            opts = {k: v for k, v in args.items() if k != "columns"}
            record = readers.read_hdf5(path, ae_features=feats, name=name, **opts)
    record.dataset_arg = dataset
    return record


def _channels(params, path):
    cols = columns_lib.parse(params["options"]["columns"])
    return checks.pick_channels(params["channels"], len(cols["ae"]), path)


class _Staged:
    """The arrays ``write_shard`` reads, memory-mapped from the staging folder."""

    def __init__(self, folder, targets):
        self.features = np.load(os.path.join(folder, "features.npy"), mmap_mode="r")
        self.time = np.load(os.path.join(folder, "time.npy"), mmap_mode="r")
        self.targets = {t: np.load(os.path.join(folder, f"target-{t}.npy"), mmap_mode="r")
                        for t in targets}
        self.label_mask = {t: np.load(os.path.join(folder, f"mask-{t}.npy"), mmap_mode="r")
                           for t in targets}


def _stage(record, targets, folder):
    os.makedirs(folder, exist_ok=True)
    arrays = {"features": record.features, "time": record.time,
              **{f"target-{t}": record.targets[t] for t in targets},
              **{f"mask-{t}": record.label_mask[t] for t in targets}}
    for name, a in arrays.items():
        np.save(os.path.join(folder, f"{name}.npy"), np.asarray(a))


def _write(item, params):
    import tensorflow as tf

    i, (staged, job, shard) = item
    folder = os.path.join(params["stage"], str(i))
    os.makedirs(folder, exist_ok=True)
    hook = os.environ.get("LABQUAKE_BEAM_TEST_FAIL_ONCE")
    if hook and not os.path.exists(hook):  # tests: a worker dies mid-shard, once
        open(hook, "w").close()
        with open(os.path.join(folder, f"{shard['split']}-{shard['index']:05d}.tfrecord"
                                            ".partial.tmp"), "wb") as f:
            f.write(b"half a shard")
        raise RuntimeError("simulated worker death while writing a shard")
    return i, shards.write_shard(tf, folder, _Staged(staged, job["targets"]), job, shard)


def _manifest(item, params):
    i, grouped = item
    jobs, written = list(grouped["job"]), list(grouped["written"])
    if not jobs:
        return
    folder = os.path.join(params["stage"], str(i))
    for name in os.listdir(folder):  # what a dead worker left half-written
        if name.endswith(".tmp"):
            os.remove(os.path.join(folder, name))
    write_json(os.path.join(folder, MANIFEST_FILE), shards.finish_manifest(jobs[0], written))
