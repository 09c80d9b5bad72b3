"""``labquake prepare``: a dataset → TFRecord shards per split + ``manifest.json``.

Record granularity: one ``tf.train.Example`` per CHUNK of ``chunk_len`` steps,
carrying the ``seq_len - 1`` steps before it as context. Every
window that ends inside a chunk can then be built from that record alone, so
shards can be interleaved and records parsed in parallel without a window ever
crossing a record, and any ``seq_len`` up to the prepared one still works. One
record per step would cost a proto parse per step and tie windows to file order.
The context of a split's first chunk comes from the steps before the split (the
end of the previous part): windows there are inputs only (AE the model would
have seen live), their labels are never used, so every labelled step of val and
test can be scored, the first ``seq_len - 1`` included. Only the record's very
first steps have no window.
Arrays travel as raw little-endian bytes (float32 features/targets, float64
time, uint8 masks, one column per target: format version 2): exact, and one
``decode_raw`` each.

The whole output is written into a temporary folder beside ``--out`` and renamed
at the end, so a failed run leaves nothing half-written.
"""

import argparse
import copy
import json
import os

import numpy as np

import labquake_tf
from labquake_tf.data import features as features_lib
from labquake_tf.data import registry, splits
from labquake_tf.data import targets as targets_lib
from labquake_tf.data.readers import sha256
from labquake_tf.data.record import channels_of
from labquake_tf.errors import DataError, UsageError
from labquake_tf.files import MANIFEST_FILE, atomic_dir, read_json, write_json

DEFAULT_WINDOW_SECONDS = 5.12
"""Default window length: the paper's 512 steps at 100 Hz, in seconds of record."""

SHARD_VERSION = 2
"""1: one label mask for all targets; 2: one mask column per target (``target_names``)."""
CHUNK_LEN = 1024
RECORDS_PER_SHARD = 64
PASSES_UNKNOWN_OPTIONS = True
"""The CLI hands options it does not know to ``run``: Beam's, with ``--runner beam``."""


def prepare(dataset, out, seq_len=None, targets=None, split=splits.PRETRAIN_RATIOS,
            channels=None, force=False, chunk_len=CHUNK_LEN,
            records_per_shard=RECORDS_PER_SHARD, features="logvar", **record_options):
    """Write shards and manifest for ``dataset`` (name or path) into ``out``; returns the manifest.

    ``features``: ``"logvar"`` (log10 AE variance, the default) or ``"std"`` (its square
    root, the reference PyTorch code's input); the manifest's ``feature_kind``.
    ``targets`` None: every target the record has (a TTF-only record has ``ttsf``).
    ``data.beam.prepare`` runs the same steps (``plan``, ``write_shard``,
    ``finish_manifest``) spread over a Beam pipeline."""
    import tensorflow as tf

    ratios = check_request(targets, split, features)
    # The detrend line and event threshold are fitted on this split's training part.
    record = registry.load_record(dataset, channels=channels, features=features,
                                  fit_split=ratios, **record_options)
    job = plan(record, dataset, seq_len=seq_len, targets=targets, ratios=ratios,
               channels=channels, features=features, chunk_len=chunk_len,
               records_per_shard=records_per_shard, record_options=record_options)
    existing = _existing(out, job["request"], force)
    if existing is not None:
        return existing
    check_parts(job, record, dataset)
    with atomic_dir(os.path.abspath(out), prefix=".prepare-") as tmp:
        written = [write_shard(tf, tmp, record, job, shard) for shard in job["shards"]]
        manifest = finish_manifest(job, written)
        write_json(os.path.join(tmp, MANIFEST_FILE), manifest)
    return manifest


def check_request(targets, split, features):
    """The split ratios, after checking what needs no record (target names, feature kind)."""
    unknown = [t for t in targets or () if t not in labquake_tf.TARGETS]
    if unknown:
        raise UsageError(f"unknown target(s) {unknown}; known: {list(labquake_tf.TARGETS)}")
    features_lib.check_kind(features)
    return splits.parse_ratios(split)


def plan(record, dataset, seq_len=None, targets=None, ratios=splits.PRETRAIN_RATIOS,
         channels=None, features="logvar", chunk_len=CHUNK_LEN,
         records_per_shard=RECORDS_PER_SHARD, record_options=None):
    """Everything about the output that needs the whole record: the request, the split,
    the scalers fitted on its training part, the manifest (shards still empty) and the
    shards to write, ``[{"split", "index", "start", "stop", "chunks"}]``. A plain dict,
    so a Beam worker can pass it on."""
    record_options = record_options or {}
    dt = record.dt
    seq_len = int(seq_len or max(1, round(DEFAULT_WINDOW_SECONDS / dt)))
    if seq_len < 1:
        raise UsageError(f"--seq-len must be at least 1, got {seq_len}")
    targets = list(targets or [t for t in labquake_tf.TARGETS if t in record.targets])
    absent = [t for t in targets if t not in record.targets]
    if absent:
        raise DataError(f"{record.source or dataset}: no {', '.join(absent)} target in this "
                        f"record (it has {', '.join(record.targets) or 'none'}); pass --targets")
    request = {"dataset": dataset_key(dataset), "sha256": record.sha256, "seq_len": seq_len,
               "targets": targets, "split": list(ratios),
               "channels": None if channels is None else [int(c) for c in channels],
               "features": features, "feature_names": record.feature_names,
               "options": _options(record_options),
               "chunk_len": chunk_len}
    if "simulator" in record.attrs:  # how to regenerate a simulated file
        request["simulator"] = record.attrs["simulator"]
    job = {"request": request, "seq_len": seq_len, "targets": targets, "dataset": str(dataset),
           "chunk_len": chunk_len}
    try:
        parts = splits.split_by_events(record.events, len(record), ratios)
    except DataError as e:
        job["error"] = f"{record.source or dataset}: {e}"  # raised after the --out check
        return job
    job["parts"] = parts
    shards, split_info = [], {}
    for name, part in parts.items():
        start, stop = part["steps"]
        first, last = part["events"]
        chunk_starts = list(range(start, stop, chunk_len))
        for s, i in enumerate(range(0, len(chunk_starts), records_per_shard)):
            shards.append({"split": name, "index": s, "start": start, "stop": stop,
                           "chunks": chunk_starts[i:i + records_per_shard]})
        split_info[name] = {
            "events": last - first, "event_range": [first, last], "step_range": [start, stop],
            "t_start": float(record.time[start]), "t_end": float(record.time[stop - 1]),
            "n_steps": stop - start,
            "n_labelled": {t: int(record.label_mask[t][start:stop].sum()) for t in targets}}
    job["shards"] = shards
    if any(p["n_steps"] < seq_len for p in split_info.values()):
        return job  # check_parts says which
    feature_scaler, target_scaler = splits.fit_scalers(record, parts["train"]["steps"], targets)
    job["manifest"] = {
        "format": "labquake-shards", "version": SHARD_VERSION, "dataset": record.name,
        "feature_names": record.feature_names, "target_names": targets,
        "feature_kind": features,
        "units": {"features": features_lib.FEATURE_KINDS[features],
                  **{t: labquake_tf.TARGET_UNITS[t] for t in targets},
                  **({"shear_stress": record.attrs["shear_stress_units"]}
                     if "shear_stress" in targets and "shear_stress_units" in record.attrs
                     else {})},
        "dt": dt, "seq_len": seq_len, "chunk_len": chunk_len,
        "scaler": {"features": feature_scaler.to_dict(), "targets": target_scaler.to_dict()},
        "n_events": int(len(record.events)), "events": record.events.tolist(),
        "event_times": record.time[record.events].tolist() if len(record.events) else [],
        "splits": split_info, "processing": record.attrs,
        "sources": [{"path": record.source, "sha256": record.sha256}],
        "package_version": labquake_tf.__version__, "request": request}
    return job


def check_parts(job, record, dataset):
    """The plan's split errors: too few events, a part shorter than one window."""
    if "error" in job:
        raise DataError(job["error"])
    for name, part in job["parts"].items():
        n = part["steps"][1] - part["steps"][0]
        if n < job["seq_len"]:
            raise DataError(f"{dataset}: split {name!r} has {n} steps, shorter than one window "
                            f"of seq_len={job['seq_len']}; pass --seq-len {n} or less, or give "
                            f"{name} a larger share with --split")


def write_shard(tf, folder, record, job, shard):
    """One shard file of the plan into ``folder``; returns its manifest entry.

    Written under a temporary name and renamed: a retried write (a Beam worker that died)
    leaves the same file."""
    filename = f"{shard['split']}-{shard['index']:05d}.tfrecord"
    path = os.path.join(folder, filename)
    tmp = f"{path}.{os.getpid()}.tmp"
    with tf.io.TFRecordWriter(tmp) as writer:
        for c0 in shard["chunks"]:
            c1 = min(c0 + job["chunk_len"], shard["stop"])
            lo = max(0, c0 - (job["seq_len"] - 1))
            writer.write(_example(tf, record, job["targets"], lo, c0, c1,
                                  shard["start"]).SerializeToString())
    os.replace(tmp, path)
    return {"split": shard["split"], "file": filename, "n_records": len(shard["chunks"]),
            "bytes": os.path.getsize(path), "sha256": sha256(path)}


def finish_manifest(job, written):
    """The plan's manifest with the written shards listed per split, in file order."""
    manifest = copy.deepcopy(job["manifest"])
    for name, info in manifest["splits"].items():
        info["shards"] = [{k: v for k, v in w.items() if k != "split"}
                          for w in sorted(written, key=lambda w: w["file"])
                          if w["split"] == name]
    return manifest


_DEFAULT_OPTIONS = {"lowpass_hz": targets_lib.DEFAULT_LOWPASS_HZ, "detrend": False,
                    "rel_drop": targets_lib.DEFAULT_REL_DROP, "min_drop": None, "ttf": "published"}


def _options(options):
    """Reader options minus the defaults, so the same data asked for two ways (CLI flags
    at their defaults, or nothing) makes the same request."""
    return {k: v for k, v in sorted(options.items())
            if not (k in _DEFAULT_OPTIONS and v == _DEFAULT_OPTIONS[k])}


def dataset_key(dataset):
    """A registry name as it is; a file as its absolute path, so a run's request
    finds its record from any working directory."""
    dataset = os.fspath(dataset)
    if dataset in registry.DATASETS or not os.path.exists(dataset):
        return dataset
    return os.path.abspath(dataset)


PORTABLE_OPTIONS = ("lowpass_hz", "detrend", "rel_drop", "window", "hop", "output")
"""Record options that mean the same on any dataset (``min_drop`` is in one record's MPa,
``ttf`` only exists for DDS CSVs)."""


def prepare_like(request, out, dataset=None, split=None):
    """Prepare data the way ``request`` (a manifest's ``request``) did.

    With ``dataset`` None: the run's own record again, which must still have the
    recorded sha256. With another ``dataset``: that record with the run's window,
    targets, channels and portable processing options (``PORTABLE_OPTIONS``), split
    ``split`` (default ``splits.FINETUNE_RATIOS``).
    """
    own = dataset is None or dataset_key(dataset) == request.get("dataset")
    needed = ("dataset", "seq_len", "targets", "split") if own else ("seq_len", "targets")
    missing = [k for k in needed if not request.get(k)]
    if missing:
        raise DataError(f"the run's manifest 'request' lacks {missing}: it was prepared by "
                         "an older labquake_tf; prepare its data again")
    options = request.get("options")
    if options is None:  # a request from before "options": its processing says the same
        processing = request.get("processing") or {}
        options = {k: processing[k] for k in ("lowpass_hz", "detrend", "rel_drop")
                   if k in processing}
    options = dict(options)
    if not own:
        options = {k: v for k, v in options.items() if k in PORTABLE_OPTIONS}
    source = request["dataset"] if own else dataset
    if own and not (source in registry.DATASETS or os.path.exists(source)):
        sim = request.get("simulator")
        hint = (f"; regenerate it with `labquake simulate --preset {sim.get('preset')} "
                f"--seed {sim.get('seed')}`" if sim else "")
        raise DataError(f"{source}: the run's record is gone (sha256 "
                                f"{request.get('sha256')}){hint}")
    split = split or (request["split"] if own else splits.FINETUNE_RATIOS)
    channels = request.get("channels")
    if channels and not all(isinstance(c, int) for c in channels):
        channels = channels_of(channels)  # older requests listed feature names here
    # the channels the run's feature names say (a model on logvar_ch2 reads channel 2)
    channels = channels or channels_of(request.get("feature_names") or [])
    features = request.get("features") or \
        features_lib.feature_kind(request.get("feature_names") or []) or "logvar"
    manifest = prepare(source, out, seq_len=request["seq_len"], targets=request["targets"],
                       split=split, channels=channels, features=features,
                       chunk_len=request.get("chunk_len", CHUNK_LEN), **options)
    if own and request.get("sha256") and manifest["request"]["sha256"] != request["sha256"]:
        raise DataError(f"{source}: sha256 {manifest['request']['sha256']} differs from the "
                         f"run's record ({request['sha256']}): not the data it was trained on")
    return manifest


def _existing(out, request, force):
    """The manifest already in ``out`` if it was made by the same request, else None."""
    if not os.path.isdir(out) or not os.listdir(out) or force:
        return None
    try:
        manifest = read_json(os.path.join(out, MANIFEST_FILE))
    except (OSError, ValueError):
        manifest = {}
    if manifest.get("request") == json.loads(json.dumps(request)):
        return manifest
    raise FileExistsError(f"{out}: not empty and not prepared from the same dataset and "
                          "options; choose another --out or pass --force")



def _example(tf, record, targets, lo, c0, c1, split_start):
    def raw(a):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[np.ascontiguousarray(a).tobytes()]))

    def int64(v):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v)]))

    y = np.stack([record.targets[t][lo:c1] for t in targets], axis=1).astype(np.float32)
    # Masked rows may hold NaN (no next event); the mask says they are not labels.
    y = np.nan_to_num(y, nan=0.0, posinf=0.0, neginf=0.0)
    mask = np.stack([record.label_mask[t][lo:c1] for t in targets], axis=1).astype(np.uint8)
    return tf.train.Example(features=tf.train.Features(feature={
        "features": raw(np.asarray(record.features[lo:c1]).astype("<f4")),
        "targets": raw(y.astype("<f4")),
        "time": raw(np.asarray(record.time[lo:c1]).astype("<f8")),
        "mask": raw(mask),
        "n_context": int64(c0 - lo),
        "start": int64(c0 - split_start),
    }))


def add_arguments(parser):
    parser.add_argument("--dataset", required=True, help="registry name (p4581, p5198, "
                        "synthetic-*) or a .csv/.h5/.npz path")
    parser.add_argument("--out", required=True, help="output folder for shards + manifest.json")
    parser.add_argument("--seq-len", type=int, default=None,
                        help=f"window length in steps (default: {DEFAULT_WINDOW_SECONDS} s of record)")
    parser.add_argument("--targets", nargs="+", default=None, choices=labquake_tf.TARGETS,
                        help="targets to store (default: all)")
    parser.add_argument("--split", default="0.7,0.1,0.2",
                        help="train,val,test ratios by event count (fine-tuning: 0.5,0.1,0.4)")
    parser.add_argument("--channels", default=None,
                        help="AE channels, 1-based, comma separated (default: 1)")
    parser.add_argument("--ttf", choices=("published", "derived"), default=None,
                        help="DDS CSVs: published TimeToFailure columns (default) or derived")
    parser.add_argument("--lowpass-hz", type=float, default=15.0,
                        help="shear-stress low-pass cutoff; skipped when >= Nyquist")
    parser.add_argument("--detrend", action=argparse.BooleanOptionalAction, default=False,
                        help="subtract a line fitted on the training part from the shear-stress "
                             "target (default: no; see data/targets.py for why)")
    parser.add_argument("--features", choices=sorted(features_lib.FEATURE_KINDS), default="logvar",
                        help="AE feature: log10 variance (default) or standard deviation "
                             "(std, the reference PyTorch models' input)")
    parser.add_argument("--columns", default=None, metavar="KEY=COLUMN,...",
                        help="a raw record's own column layout (CSV, Parquet, HDF5), e.g. "
                             "ae=acoustic_data,ttf=time_to_failure,rate=4e6; keys: ae, "
                             "stress, ttf, ttef, rate (see data/columns.py)")
    parser.add_argument("--force", action="store_true", help="replace a non-empty --out")
    parser.add_argument("--runner", default="local",
                        help="local (default), or beam: an Apache Beam pipeline (pip install "
                             "labquake_tf[beam]); beam options follow (--direct_num_workers, "
                             "--runner flink|spark|dataflow after --runner beam, ...)")


def run(args):
    options = {"lowpass_hz": args.lowpass_hz, "detrend": args.detrend}
    if args.ttf:
        options["ttf"] = args.ttf
    if args.columns:
        options["columns"] = args.columns
    try:
        channels = [int(c) for c in args.channels.split(",")] if args.channels else None
    except ValueError:
        raise UsageError(f"--channels: expected 1-based channel numbers like 1,2; "
                         f"got {args.channels!r}") from None
    unknown = getattr(args, "unknown_options", [])
    kwargs = dict(seq_len=args.seq_len, targets=args.targets, split=args.split,
                  channels=channels, force=args.force, features=args.features, **options)
    if args.runner == "local":
        if unknown:
            raise UsageError(f"unrecognized arguments: {' '.join(unknown)} (Beam's options "
                             "need --runner beam; see 'labquake prepare --help')")
        manifests = [prepare(args.dataset, args.out, **kwargs)]
    else:
        from labquake_tf.data import beam

        manifests = beam.prepare(args.dataset, args.out, runner=args.runner,
                                 beam_args=unknown, **kwargs)
    for manifest in manifests:
        summary = {n: {"events": s["events"], "steps": s["n_steps"],
                       "t": [s["t_start"], s["t_end"]]} for n, s in manifest["splits"].items()}
        out = args.out if len(manifests) == 1 else os.path.join(
            args.out, os.path.basename(os.path.splitext(manifest["sources"][0]["path"])[0]))
        print(json.dumps({"out": os.path.abspath(out), "dataset": manifest["dataset"],
                          "n_events": manifest["n_events"], "seq_len": manifest["seq_len"],
                          "splits": summary}))
    return 0
