"""Contiguous train/val/test splits by event counts, and scalers fit on train only.

Splitting by events rather than by time keeps whole seismic cycles together:
each boundary sits on the step after an event's end (the stress minimum), so a
part starts at the beginning of a loading cycle and no slip straddles two parts.
"""

import numpy as np

from labquake_tf.data.scaling import MinMaxScaler
from labquake_tf.errors import DataError, UsageError

SPLIT_NAMES = ("train", "val", "test")
PRETRAIN_RATIOS = (0.7, 0.1, 0.2)
FINETUNE_RATIOS = (0.5, 0.1, 0.4)


def parse_ratios(ratios):
    """``"0.7,0.1,0.2"`` or a sequence → a tuple of positive floats summing to 1."""
    text = ratios
    try:
        if isinstance(ratios, str):
            ratios = [float(r) for r in ratios.split(",")]
        ratios = tuple(float(r) for r in ratios)
    except (TypeError, ValueError):
        ratios = ()
    if len(ratios) != len(SPLIT_NAMES) or min(ratios) < 0 or sum(ratios) <= 0:
        raise UsageError(f"split ratios must be three non-negative numbers train,val,test "
                         f"such as 0.7,0.1,0.2; got {text!r}")
    total = sum(ratios)
    return tuple(r / total for r in ratios)


def event_counts(n_events, ratios=PRETRAIN_RATIOS):
    """Events per part, rounding train and val and giving test the rest."""
    ratios = parse_ratios(ratios)
    n_train = int(round(ratios[0] * n_events))
    n_val = int(round(ratios[1] * n_events))
    return n_train, n_val, n_events - n_train - n_val


def min_events(ratios=PRETRAIN_RATIOS, limit=100_000):
    """The fewest events ``ratios`` splits with at least one event in every part."""
    for n in range(len(SPLIT_NAMES), limit):
        if min(event_counts(n, ratios)) >= 1:
            return n
    return limit


def _fitting_split(n_events):
    """Shares that give ``n_events`` (>= 3) one event each for val and test at least."""
    val = max(1, round(0.1 * n_events))
    test = max(1, round(0.2 * n_events))
    return f"{n_events - val - test},{val},{test}"


def split_by_events(events, n_steps, ratios=PRETRAIN_RATIOS):
    """``{name: {"steps": [start, stop), "events": [first, stop)}}``, contiguous.

    Part ``k`` holds its share of events; it ends on the step after the end of
    its last event (the last part runs to the end of the record).
    """
    events = np.asarray(events).reshape(-1, 2)
    counts = event_counts(len(events), ratios)
    if min(counts) < 1:
        shares = ",".join(f"{r:.2g}" for r in parse_ratios(ratios))
        need = min_events(ratios)
        fix = "a longer record is the only fix"
        if len(events) >= len(SPLIT_NAMES):
            fitting = _fitting_split(len(events))
            # evaluate names its ratios --ratios (its --split picks the part to score).
            fix = f"--split {fitting} (evaluate: --ratios {fitting}) splits {len(events)}"
        raise DataError(f"{len(events)} stick-slip event(s) cannot be split {shares} with at "
                        f"least one event per part: that split needs {need} events "
                        f"({fix})")
    parts, first, start = {}, 0, 0
    for i, (name, count) in enumerate(zip(SPLIT_NAMES, counts)):
        stop_event = first + count
        stop = n_steps if i == len(SPLIT_NAMES) - 1 else int(events[stop_event - 1, 1]) + 1
        parts[name] = {"steps": [start, stop], "events": [first, stop_event]}
        first, start = stop_event, stop
    return parts


def fit_scalers(record, train_steps, target_names):
    """Feature and target scalers fit on the training steps only.

    Each target is fit on its own labelled steps only: masked rows hold no real label.
    """
    start, stop = train_steps
    features = MinMaxScaler().fit(record.features[start:stop], names=record.feature_names)
    lo, hi = [], []
    for name in target_names:
        y = record.targets[name][start:stop][record.label_mask[name][start:stop]]
        if len(y) == 0:
            raise ValueError(f"{record.name}: the training split has no labelled steps "
                             f"for {name!r}")
        column = MinMaxScaler().fit(y)
        lo.append(column.data_min[0])
        hi.append(column.data_max[0])
    return features, MinMaxScaler(lo, hi, names=list(target_names))
