"""A fraction of a prepared training split, by whole events: the data-limited runs
(``jobs.finetune``'s ``train_fraction``) train on the last events only, those nearest
the validation part, so that validation and test stay what they were."""

import math

import numpy as np

from labquake_tf.data import pipeline, windows
from labquake_tf.data.scaling import MinMaxScaler


def check_fraction(fraction):
    """``fraction`` as a float in (0, 1], else ValueError naming ``train_fraction``."""
    try:
        value = float(fraction)
    except (TypeError, ValueError):
        value = float("nan")
    if not 0 < value <= 1:
        raise ValueError(f"train_fraction must be in (0, 1], got {fraction!r}")
    return value


def kept_events(data_dir, train_fraction=1.0):
    """``[onset, end]`` of the training events ``train_fraction`` keeps: the last
    ``ceil(fraction * n)``, nearest the validation part (at least one)."""
    return _kept(pipeline.split_arrays(data_dir, "train")["events"], train_fraction)


def first_kept_step(data_dir, train_fraction=1.0):
    """The first training step ``train_fraction`` keeps: right after the end of the last
    dropped event (0 when none is dropped), so the kept part holds whole seismic cycles."""
    return _first_kept_step(pipeline.split_arrays(data_dir, "train")["events"], train_fraction)


def _kept(events, train_fraction):
    keep = max(1, math.ceil(check_fraction(train_fraction) * len(events) - 1e-9))
    return events[len(events) - keep:]


def _first_kept_step(events, train_fraction):
    dropped = len(events) - len(_kept(events, train_fraction))
    return int(events[dropped - 1, 1]) + 1 if dropped > 0 else 0


def training_windows(data_dir, seq_len, train_fraction=1.0):
    """``((x, y), steps)``: scaled windows ending on every labelled step of the training
    split from ``first_kept_step`` on, and those end steps (split-relative)."""
    manifest = pipeline.load_manifest(data_dir)
    arrays = pipeline.split_arrays(data_dir, "train")
    x = MinMaxScaler.from_dict(manifest["scaler"]["features"]).transform(arrays["features"])
    names = manifest["target_names"]
    y = MinMaxScaler.from_dict(manifest["scaler"]["targets"]).transform(
        np.stack([arrays["targets"][n] for n in names], axis=1))
    steps = np.arange(len(y))
    mask = arrays["label_mask"]
    if isinstance(mask, dict):  # one mask per target
        mask = np.all([mask[n] for n in names], axis=0)
    start = max(seq_len - 1, _first_kept_step(arrays["events"], train_fraction))
    ends = steps[np.asarray(mask, bool) & (steps >= start)]
    if len(ends) == 0:
        raise ValueError(f"{data_dir}: train_fraction {train_fraction} keeps no labelled "
                         f"{seq_len}-step training window")
    return (windows.cut(x, ends, seq_len).astype(np.float32), y[ends].astype(np.float32)), ends
