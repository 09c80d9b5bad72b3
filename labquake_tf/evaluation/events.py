"""Event-level scores for time-to-failure predictions.

At step ``t`` a TTsF prediction says "failure at ``t + ttsf_pred``". Steps that
count down to the same true failure (the same ``t + ttsf_true``) form one
seismic cycle; each cycle is scored by how far its predicted failure times
fall from the true one. Averaging per cycle, not per step, weighs long and
short cycles alike, which is how a forecaster meets them. The same applies to
TTeF and the end of failure.
"""

import numpy as np


def cycles(time, ttf_true, tol=None):
    """Cycle index per step: a new cycle starts where ``time + ttf_true`` jumps.

    ``tol`` (s) defaults to half the median step, so rounding in the labels
    does not split a cycle.
    """
    time, ttf_true = np.asarray(time, np.float64), np.asarray(ttf_true, np.float64)
    if time.shape != ttf_true.shape or time.ndim != 1:
        raise ValueError(f"time {time.shape} and ttf_true {ttf_true.shape} must be equal 1-D shapes")
    if len(time) < 2:
        return np.zeros(len(time), np.int64)
    tol = 0.5 * float(np.median(np.diff(time))) if tol is None else tol
    jumps = np.abs(np.diff(time + ttf_true)) > tol
    return np.concatenate([[0], np.cumsum(jumps)])


def event_scores(time, ttf_true, ttf_pred, tol=None):
    """Per-cycle error of the predicted failure time, and their means over cycles.

    Returns ``{"n_events", "mae_s", "median_abs_error_s", "bias_s", "final_abs_error_s",
    "events": [{"failure_time", "n_steps", "mae_s", "bias_s", "final_error_s"}]}``;
    ``final_error_s`` is the error of the last prediction before the failure.
    """
    ttf_pred = np.asarray(ttf_pred, np.float64).reshape(-1)
    ids = cycles(time, ttf_true, tol)
    if ttf_pred.shape != ids.shape:
        raise ValueError(f"ttf_pred has {ttf_pred.shape[0]} steps, ttf_true {ids.shape[0]}")
    error = ttf_pred - np.asarray(ttf_true, np.float64)  # = predicted minus true failure time
    events = []
    for k in np.unique(ids):
        sel = ids == k
        err = error[sel]
        events.append({"failure_time": float(time[sel][0] + ttf_true[sel][0]),
                       "n_steps": int(sel.sum()), "mae_s": float(np.abs(err).mean()),
                       "bias_s": float(err.mean()), "final_error_s": float(err[-1])})
    per = {key: np.array([e[key] for e in events]) for key in ("mae_s", "bias_s", "final_error_s")}
    return {"n_events": len(events),
            "mae_s": float(per["mae_s"].mean()) if events else float("nan"),
            "median_abs_error_s": float(np.median(np.abs(error))) if events else float("nan"),
            "bias_s": float(per["bias_s"].mean()) if events else float("nan"),
            "final_abs_error_s": float(np.abs(per["final_error_s"]).mean()) if events else float("nan"),
            "events": events}
