"""What every record reader shares: the checks whose errors name the file, the field and
the row or time, and ``finish``, the one way a reader's arrays become a ``Record``
(``targets.build_targets``: one definition of filtering, events and time to failure)."""

import hashlib
import os

import numpy as np

from labquake_tf.data import targets as targets_lib
from labquake_tf.data.record import Record
from labquake_tf.errors import DataError, more_text

DEFAULT_CHANNELS = (1,)
_KIND_TEXT = {"logvar": "log-variance", "std": "standard deviation", "var": "variance"}
MIN_ROWS = 32
"""Fewer rows cannot hold a stick-slip cycle, nor feed the stress low-pass filter."""


def sha256(path, block=1 << 20):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(block), b""):
            h.update(b)
    return h.hexdigest()


class ChannelError(DataError):
    """Channels the record does not have (the fine-tune's search stops at the first)."""


def pick_channels(channels, n_available, path):
    channels = tuple(DEFAULT_CHANNELS if channels is None else channels)
    bad = [c for c in channels if not 1 <= int(c) <= n_available]
    if bad or not channels:
        raise ChannelError(f"{path}: channels {list(channels)} not available (the file has "
                           f"channels 1..{n_available}; --channels picks them)")
    return [int(c) for c in channels]


def seconds(t):
    """A time for a message: ``3949.3``, ``12.07``."""
    return f"{t:.2f}".rstrip("0").rstrip(".") if np.isfinite(t) else str(t)


def at_time(time, i):
    try:
        return f" (t = {seconds(float(time[i]))} s)"
    except (TypeError, ValueError, IndexError):
        return ""


def finish(name, path, time, logvar, channels, shear_stress, published=None, kind="logvar",
           **target_options):
    if len(time) < MIN_ROWS:
        raise DataError(f"{path}: {len(time)} rows of data; a record needs at least {MIN_ROWS} "
                        "(and three stick-slip events to split)")
    bad = ~np.isfinite(logvar)
    if bad.any():
        row, col = (int(i) for i in np.argwhere(bad)[0])
        raise DataError(f"{path}: AE {_KIND_TEXT.get(kind, kind)} of channel {channels[col]} "
                        f"is not finite in "
                        f"the window ending t = {seconds(time[row])} s (a zero-variance or "
                        f"non-finite stretch of the AE){more_text(int(bad.sum()) - 1, 'window')}")
    check_finite(path, "shear_stress", shear_stress, time)
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
            f"{'' if time is None else at_time(time, index[0])}")


def check_finite(path, label, values, time=None):
    """NaN/Inf in an array read from ``path`` → a DataError naming the first one."""
    values = np.asarray(values)
    bad = ~np.isfinite(values)
    if bad.any():
        index = tuple(int(i) for i in np.argwhere(bad)[0])
        raise DataError(f"{path}: {_where(label, index, time)} is {values[index]}, not a finite "
                        f"number{more_text(int(bad.sum()) - 1)}")


def check_increasing(path, label, time):
    step = np.diff(time)
    if len(step) and not (step > 0).all():
        i = int(np.argmin(step > 0)) + 1
        raise DataError(f"{path}: {label}[{i}] = {time[i]:g} s does not come after "
                        f"{label}[{i - 1}] = {time[i - 1]:g} s (time must increase)")


def numeric(path, label, values, time=None):
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
    bad = [i for i in np.ndindex(values.shape) if not is_number(values[i])]
    index = bad[0] if bad else (0,) * values.ndim
    shown = values[index]
    shown = shown.decode(errors="replace") if isinstance(shown, bytes) else shown
    raise DataError(f"{path}: {_where(label, index, time)}: {shown!r} is not a number"
                    f"{more_text(len(bad) - 1)}")


def is_number(value):
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def onto_windows(path, label, time, values, stress_time, stress):
    """Keep the windows (ending at ``time``) inside the stress record; interpolate the
    stress onto them, so a step's target never comes from after the AE it has seen."""
    # t0 + hop * k rounds up past a stress sample on the same instant (1e-15 s); a
    # microsecond of slack keeps that window, far below any hop or sample interval.
    slack = 1e-6
    inside = (time >= stress_time[0] - slack) & (time <= stress_time[-1] + slack)
    if not inside.any():
        raise DataError(f"{path}: the AE feature times ({seconds(time[0]) if len(time) else '-'}"
                        f"..{seconds(time[-1]) if len(time) else '-'} s) do not overlap "
                        f"{label} ({seconds(stress_time[0])}..{seconds(stress_time[-1])} s)")
    time = time[inside]
    return time, values[inside], np.interp(time, stress_time, stress)


def stem(path):
    return os.path.splitext(os.path.basename(str(path)))[0]
