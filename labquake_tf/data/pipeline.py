"""Prepared shards → tf.data windows, or → numpy arrays in physical units.

The window ending at step ``t`` (it includes ``t``) predicts the targets at
``t``; windows never reach across a split boundary.

Each target has its own label mask (shear stress is a label wherever it was
measured, time to failure is not after the last event). ``make_dataset`` keeps
a window when its last step is a label for EVERY requested target: training on
one target (fine-tuning, the default pretraining) uses all of that target's
labels; training on several at once drops the windows where any of them is
unlabelled, so the plain MSE never sees a fake label (a masked loss would keep
them for the labelled targets, at the price of a custom loss in every training
path). Evaluation scores each target on its own mask (``split_arrays`` returns
them per target).
"""

import itertools
import os

import numpy as np
import tensorflow as tf

from labquake_tf.data.checks import sha256
from labquake_tf.data.scaling import MinMaxScaler
from labquake_tf.files import MANIFEST_FILE, read_json

SHUFFLE_BUFFER = 20_000

# Windows per (data dir, split, seq_len, targets, shards): counted once per process.
_WINDOW_COUNTS = {}

_SPEC = {
    "features": tf.io.FixedLenFeature([], tf.string),
    "targets": tf.io.FixedLenFeature([], tf.string),
    "time": tf.io.FixedLenFeature([], tf.string),
    "mask": tf.io.FixedLenFeature([], tf.string),
    "n_context": tf.io.FixedLenFeature([], tf.int64),
    "start": tf.io.FixedLenFeature([], tf.int64),
}


def load_manifest(data_dir):
    """A prepared data dir's manifest, checked for the fields every reader needs."""
    path = os.path.join(data_dir, MANIFEST_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no manifest (run `labquake prepare` first)")
    manifest = read_json(path)
    missing = [k for k in ("feature_names", "target_names", "seq_len", "scaler", "splits")
               if k not in manifest]
    if missing:
        raise ValueError(f"{path}: missing field(s) {missing}")
    return manifest


def shard_paths(data_dir, manifest, split):
    """The split's shard paths, checked against the manifest (presence, size, sha256)."""
    if split not in manifest["splits"]:
        raise ValueError(f"{data_dir}/manifest.json: no split {split!r} "
                         f"(has {sorted(manifest['splits'])})")
    paths = []
    for shard in manifest["splits"][split]["shards"]:
        path = os.path.join(data_dir, shard["file"])
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path}: shard listed in the manifest is missing")
        if os.path.getsize(path) != shard["bytes"] or sha256(path) != shard["sha256"]:
            raise ValueError(f"{path}: shard does not match the manifest (size or sha256 "
                             "differs: corrupt, truncated or from another run)")
        paths.append(path)
    return paths


def make_dataset(data_dir, split, seq_len=None, targets=None, batch_size=128, shuffle=False,
                 seed=0, repeat=False, drop_remainder=False):
    """``(x, y)`` batches: ``x`` (B, seq_len, n_features) and ``y`` (B, n_targets), scaled.

    The dataset knows its length (``cardinality()``: batches per pass), so training
    needs no counting pass and ``fit`` ends each epoch on time.
    """
    manifest = load_manifest(data_dir)
    seq_len, target_idx, target_scaler = _check_request(data_dir, manifest, split, seq_len, targets)
    paths = shard_paths(data_dir, manifest, split)
    n_features = len(manifest["feature_names"])
    n_stored = len(manifest["target_names"])
    feature_scaler = MinMaxScaler.from_dict(manifest["scaler"]["features"])
    offsets = tf.range(-seq_len + 1, 1, dtype=tf.int32)

    n_masks = _n_masks(manifest)

    def parse(path, serialized):
        ex = _parse(path, serialized, n_features, n_stored, n_masks)
        x = feature_scaler.transform(ex["features"])
        y = target_scaler.transform(tf.gather(ex["targets"], target_idx, axis=1))
        mask = ex["mask"] if n_masks == 1 else tf.gather(ex["mask"], target_idx, axis=1)
        return x, y, tf.reduce_all(mask, axis=1), tf.cast(ex["n_context"], tf.int32)

    def window_ends(mask, n_context):
        # Ends need seq_len - 1 steps of history inside the record (its context
        # included) and a real label at the end for every requested target.
        ends = tf.range(tf.maximum(n_context, seq_len - 1), tf.shape(mask)[0])
        return tf.boolean_mask(ends, tf.gather(mask, ends))

    # The graph twin of windows.cut (tf.data cannot call numpy per record).
    def windows(x, y, mask, n_context):
        ends = window_ends(mask, n_context)
        return tf.data.Dataset.from_tensor_slices(
            (tf.gather(x, ends[:, None] + offsets), tf.gather(y, ends)))

    def records(paths, shuffle):
        files = tf.data.Dataset.from_tensor_slices(paths)
        if shuffle:
            files = files.shuffle(len(paths), seed=seed)
        ds = files.interleave(
            lambda p: tf.data.TFRecordDataset(p).map(lambda r: (p, r)),
            cycle_length=min(len(paths), 4), num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True)
        return ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    key = (os.path.abspath(data_dir), split, seq_len, tuple(target_idx),
           tuple(s["sha256"] for s in manifest["splits"][split]["shards"]))
    if key not in _WINDOW_COUNTS:
        # Labels and record bounds only, no window is cut: a fraction of an epoch's cost.
        sizes = records(paths, False).map(
            lambda x, y, mask, n_context: tf.size(window_ends(mask, n_context), tf.int64))
        _WINDOW_COUNTS[key] = int(sizes.reduce(tf.constant(0, tf.int64), lambda a, b: a + b))
    # A known length lets Keras end each epoch after its last batch instead of
    # running the iterator dry (the "ran out of data" warning and OUT_OF_RANGE logs).
    ds = records(paths, shuffle).flat_map(windows).apply(
        tf.data.experimental.assert_cardinality(_WINDOW_COUNTS[key]))
    if shuffle:
        n = manifest["splits"][split]["n_steps"]
        ds = ds.shuffle(min(n, SHUFFLE_BUFFER), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    return ds.batch(batch_size, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)


def iterate(dataset):
    """The batches of a dataset of known length, in Python, without asking for one past
    the last (which makes TensorFlow log an OUT_OF_RANGE warning)."""
    n = int(dataset.cardinality())
    if n < 0:
        raise ValueError("dataset of unknown or infinite length; use pipeline.make_dataset")
    return itertools.islice(dataset, n)


def split_arrays(data_dir, split):
    """The split in physical units: ``time, features, targets, label_mask, events``.

    ``targets`` and ``label_mask`` are dicts by target name (one mask per target);
    ``events`` are ``[onset, end]`` step indices relative to the split's first step;
    ``context`` holds the (up to ``seq_len - 1``) feature rows before the split's
    first step, inputs for the windows ending on its first steps.
    """
    manifest = load_manifest(data_dir)
    paths = shard_paths(data_dir, manifest, split)
    n_features, names = len(manifest["feature_names"]), manifest["target_names"]
    n_masks = _n_masks(manifest)
    parts = {"time": [], "features": [], "targets": [], "mask": []}
    context = None
    for path, shard in zip(paths, manifest["splits"][split]["shards"]):
        # Exactly the records the manifest counts: reading past the last one would log
        # TensorFlow's OUT_OF_RANGE warning.
        records = iter(tf.data.TFRecordDataset(path))
        for serialized in (next(records) for _ in range(shard["n_records"])):
            ex = _parse(tf.constant(path), serialized, n_features, len(names), n_masks)
            k = int(ex["n_context"])
            if context is None:
                context = ex["features"].numpy()[:k]
            for key in parts:
                parts[key].append(ex[key].numpy()[k:])
    arrays = {k: np.concatenate(v) for k, v in parts.items()}
    info = manifest["splits"][split]
    start = info["step_range"][0] if "step_range" in info else 0
    first, last = info.get("event_range", [0, 0])
    events = np.asarray(manifest.get("events", []), np.int64).reshape(-1, 2)[first:last] - start
    if len(arrays["time"]) != info["n_steps"]:
        raise ValueError(f"{data_dir}: split {split!r} shards hold {len(arrays['time'])} steps, "
                         f"manifest says {info['n_steps']}")
    return {"time": arrays["time"], "features": arrays["features"],
            "targets": {n: arrays["targets"][:, i].astype(np.float64) for i, n in enumerate(names)},
            "label_mask": {n: arrays["mask"][:, min(i, n_masks - 1)].copy()
                           for i, n in enumerate(names)},
            "events": events, "context": context}


def _n_masks(manifest):
    """Mask columns per step: one per target since shard version 2, one shared before."""
    return len(manifest["target_names"]) if manifest.get("version", 1) >= 2 else 1


def _check_request(data_dir, manifest, split, seq_len, targets):
    seq_len = int(seq_len or manifest["seq_len"])
    if not 1 <= seq_len <= manifest["seq_len"]:
        raise ValueError(f"{data_dir}: seq_len={seq_len} exceeds the prepared seq_len "
                         f"{manifest['seq_len']} (records carry only that much context)")
    if split in manifest["splits"] and manifest["splits"][split]["n_steps"] < seq_len:
        raise ValueError(f"{data_dir}: split {split!r} has fewer steps than one window")
    names = manifest["target_names"]
    targets = list(names if targets is None else [targets] if isinstance(targets, str) else targets)
    unknown = [t for t in targets if t not in names]
    if unknown:
        raise ValueError(f"{data_dir}/manifest.json: target(s) {unknown} not prepared "
                         f"(has {names})")
    scaler = MinMaxScaler.from_dict(manifest["scaler"]["targets"]).select(targets)
    return seq_len, [names.index(t) for t in targets], scaler


def _parse(path, serialized, n_features, n_targets, n_masks):
    ex = tf.io.parse_single_example(serialized, _SPEC)
    time = tf.io.decode_raw(ex["time"], tf.float64)
    n = tf.shape(time)[0]
    features = tf.io.decode_raw(ex["features"], tf.float32)
    targets = tf.io.decode_raw(ex["targets"], tf.float32)
    mask = tf.io.decode_raw(ex["mask"], tf.uint8)
    checks = [
        tf.debugging.Assert(tf.equal(tf.size(features), n * n_features),
                            ["features width does not match the manifest in", path]),
        tf.debugging.Assert(tf.equal(tf.size(targets), n * n_targets),
                            ["targets width does not match the manifest in", path]),
        tf.debugging.Assert(tf.equal(tf.size(mask), n * n_masks),
                            ["mask length does not match the manifest in", path]),
        tf.debugging.Assert(tf.reduce_all(tf.math.is_finite(features)),
                            ["NaN or inf in features of", path]),
    ]
    with tf.control_dependencies(checks):
        return {"features": tf.reshape(features, [n, n_features]),
                "targets": tf.reshape(targets, [n, n_targets]),
                "time": tf.identity(time),
                "mask": tf.cast(tf.reshape(mask, [n, n_masks]), tf.bool),
                "n_context": ex["n_context"], "start": ex["start"]}
