"""Contiguous train/val/test splits by event counts, and scalers fit on train only.

Splitting by events rather than by time keeps whole seismic cycles together:
each boundary sits on the step after an event's end (the stress minimum), so a
part starts at the beginning of a loading cycle and no slip straddles two parts.
"""

import numpy as np

from labquake_tf.data.scaling import MinMaxScaler

SPLIT_NAMES = ("train", "val", "test")
PRETRAIN_RATIOS = (0.7, 0.1, 0.2)
FINETUNE_RATIOS = (0.5, 0.1, 0.4)


def parse_ratios(ratios):
    """``"0.7,0.1,0.2"`` or a sequence → a tuple of positive floats summing to 1."""
    if isinstance(ratios, str):
        ratios = [float(r) for r in ratios.split(",")]
    ratios = tuple(float(r) for r in ratios)
    if len(ratios) != len(SPLIT_NAMES) or min(ratios) < 0 or sum(ratios) <= 0:
        raise ValueError(f"split ratios must be three non-negative numbers (train,val,test), got {ratios}")
    total = sum(ratios)
    return tuple(r / total for r in ratios)


def event_counts(n_events, ratios=PRETRAIN_RATIOS):
    """Events per part, rounding train and val and giving test the rest."""
    ratios = parse_ratios(ratios)
    n_train = int(round(ratios[0] * n_events))
    n_val = int(round(ratios[1] * n_events))
    return n_train, n_val, n_events - n_train - n_val


def split_by_events(events, n_steps, ratios=PRETRAIN_RATIOS):
    """``{name: {"steps": [start, stop), "events": [first, stop)}}``, contiguous.

    Part ``k`` holds its share of events; it ends on the step after the end of
    its last event (the last part runs to the end of the record).
    """
    events = np.asarray(events).reshape(-1, 2)
    counts = event_counts(len(events), ratios)
    if min(counts) < 1:
        raise ValueError(f"{len(events)} events cannot be split {parse_ratios(ratios)} with at "
                         f"least one event per part (got {dict(zip(SPLIT_NAMES, counts))})")
    parts, first, start = {}, 0, 0
    for i, (name, count) in enumerate(zip(SPLIT_NAMES, counts)):
        stop_event = first + count
        stop = n_steps if i == len(SPLIT_NAMES) - 1 else int(events[stop_event - 1, 1]) + 1
        parts[name] = {"steps": [start, stop], "events": [first, stop_event]}
        first, start = stop_event, stop
    return parts


def fit_scalers(record, train_steps, target_names):
    """Feature and target scalers fit on the training steps only.

    Targets are fit on labelled steps only: masked rows hold no real label.
    """
    start, stop = train_steps
    features = MinMaxScaler().fit(record.features[start:stop], names=record.feature_names)
    mask = record.label_mask[start:stop]
    y = np.stack([record.targets[n][start:stop][mask] for n in target_names], axis=1)
    if len(y) == 0:
        raise ValueError(f"{record.name}: the training split has no labelled steps")
    targets = MinMaxScaler().fit(y, names=list(target_names))
    return features, targets
