"""The steps of ``prepare`` between a record and its files: the plan (request, split,
scalers fitted on the training part, the manifest and its shards), one shard, the
manifest. ``prepare.prepare`` runs them one after another, ``beam.prepare`` spreads
them over a Beam pipeline: the same functions, so the same output.

Record granularity: one ``tf.train.Example`` per CHUNK of ``chunk_len`` steps,
carrying the ``seq_len - 1`` steps before it as context (see ``prepare``).
Arrays travel as raw little-endian bytes (float32 features/targets, float64
time, uint8 masks, one column per target: format version 2): exact, and one
``decode_raw`` each.
"""

import copy
import json
import os

import numpy as np

import labquake_tf
from labquake_tf.data import features as features_lib
from labquake_tf.data import registry, splits
from labquake_tf.data import targets as targets_lib
from labquake_tf.data.checks import sha256
from labquake_tf.errors import DataError, UsageError
from labquake_tf.files import MANIFEST_FILE, read_json

DEFAULT_WINDOW_SECONDS = 5.12
"""Default window length: the paper's 512 steps at 100 Hz, in seconds of record."""

SHARD_VERSION = 2
"""1: one label mask for all targets; 2: one mask column per target (``target_names``)."""
CHUNK_LEN = 1024
RECORDS_PER_SHARD = 64


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



def existing(out, request, force):
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
