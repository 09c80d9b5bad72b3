"""Threshold alarms on streamed predictions, and how well they warn of failures.

An alarm ``"ttsf<1.0"`` fires when a prediction crosses into its condition (it
held false at the previous prediction); it re-arms when the condition is false
again, and after a stream reset.
"""

import dataclasses
import operator
import re

import numpy as np

from labquake_tf.errors import UsageError

OPS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}


@dataclasses.dataclass
class Alarm:
    name: str
    op: str
    threshold: float

    def __post_init__(self):
        self._active = False

    @classmethod
    def parse(cls, spec, names=None):
        m = re.fullmatch(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*(<=|>=|<|>)\s*([-+0-9.eE]+)\s*", spec)
        if not m:
            raise UsageError(f"alarm {spec!r}: expected NAME<VALUE, NAME<=VALUE, NAME>VALUE "
                             "or NAME>=VALUE, e.g. 'ttsf<1.0'")
        try:
            threshold = float(m.group(3))
        except ValueError:
            raise UsageError(f"alarm {spec!r}: {m.group(3)!r} is not a number") from None
        if names is not None and m.group(1) not in names:
            raise UsageError(f"alarm {spec!r}: the model predicts {list(names)}, "
                             f"not {m.group(1)!r}")
        return cls(m.group(1), m.group(2), threshold)

    def __str__(self):
        return f"{self.name}{self.op}{self.threshold:g}"

    def update(self, predictions):
        """``[(time, value)]`` where ``predictions`` cross into the condition."""
        values = predictions.values[self.name]
        on = OPS[self.op](values, self.threshold)
        before = np.concatenate([[self._active], on[:-1]])
        fired = np.flatnonzero(on & ~before)
        if len(on):
            self._active = bool(on[-1])
        return [(float(predictions.time[i]), float(values[i])) for i in fired]

    def reset(self):
        self._active = False


def score_alarms(alarm_times, onsets, t_start, t_end, max_lead):
    """Warnings against true failure onsets in ``[t_start, t_end]``.

    An alarm is a true warning when a failure starts within ``max_lead`` s after it;
    any other alarm is false. Returns the fraction of events warned (an event with a
    true warning before it), the median and all lead times (onset - its earliest
    warning), the false alarms and their rate per minute.
    """
    alarm_times = np.sort(np.asarray(alarm_times, np.float64))
    onsets = np.sort(np.asarray(onsets, np.float64))
    onsets = onsets[(onsets >= t_start) & (onsets <= t_end)]
    alarm_times = alarm_times[(alarm_times >= t_start) & (alarm_times <= t_end)]
    nxt = np.searchsorted(onsets, alarm_times, side="left")
    lead = np.full(len(alarm_times), np.inf)
    has = nxt < len(onsets)
    lead[has] = onsets[nxt[has]] - alarm_times[has]
    true = lead <= max_lead
    leads = []
    for j in range(len(onsets)):
        mine = true & (nxt == j)
        if mine.any():
            leads.append(float(lead[mine].max()))
    minutes = max(t_end - t_start, 1e-9) / 60.0
    n_false = int((~true).sum())
    return {"events": int(len(onsets)), "warned": len(leads),
            "fraction_warned": len(leads) / len(onsets) if len(onsets) else float("nan"),
            "median_lead_s": float(np.median(leads)) if leads else float("nan"),
            "lead_times_s": leads, "alarms": int(len(alarm_times)), "false_alarms": n_false,
            "false_alarms_per_min": n_false / minutes, "minutes": minutes}
