"""Shear stress → model targets: low-pass, detrend, stick-slip events, time to failure.

Events are found on the (filtered, detrended) stress with a zig-zag turning-point
detector: a peak is confirmed once stress falls ``min_drop`` below it, a trough
once stress rises ``min_drop`` above it. A stick-slip event is a confirmed peak
(the stress peak before the drop) and the trough after it (the end of slip). With
``min_drop`` a fraction of the stress range, small precursory slips and noise
never reach the threshold, and the defaults give the 31 large events of p4581 and
the 46 of p5198.

Nothing is fitted on test data. The detrend line (least squares of the filtered
stress against time) and the event threshold (``rel_drop`` times the range of
the detrended stress) are fitted on the TRAINING part of the split and applied to
the whole record. The split is by events and the events are detected with the
threshold on the detrended stress, so each depends on the other; ``fit_on_train``
resolves it by iterating from a start that holds no test data:

1. provisional training part: the first ``train ratio`` share of the steps (time
   order; the test part is the record's LAST events, so for any record whose
   events are not crowded at its start this holds no test step);
2. fit line and threshold on that part, detect events on the whole record, split
   them by the ratios: the training part ends after its last event's end;
3. refit on that training part and repeat until the boundary stops moving (two
   passes on p4581 and p5198; at most ``MAX_FIT_PASSES``, after which the last
   fit stands and ``fit.converged`` is False in the manifest).

The shear-stress TARGET is not detrended by default (``detrend=False``: MPa as
measured, low-passed). A line fitted on the training part alone extrapolates
badly: a least-squares line over whole stick-slip cycles is biased by where the
part starts and ends in a cycle, and real trends are not linear (p4581's first
half loads at 1.0e-3 MPa/s, the whole record at 2.2e-4). On p4581 (5:1:4, the
main job's export, seed 0) fine-tuning on the train-fitted detrended stress
scored validation RMSE 0.061 MPa, on the stress as measured 0.027 MPa. The
line is still fitted (on train) for the event threshold and the event detector,
where a loading trend must not count as a stress drop; ``detrend=True``
(``labquake prepare --detrend``) subtracts it from the target too (units
"MPa, detrended").

So a change confined to the test part leaves the fit, and the training targets,
unchanged as long as it does not change the number of events (which the split
ratios count). ``prepare`` passes its split ratios here (``fit_split``); the
manifest's ``processing.fit`` records the fitted slope (MPa/s), intercept (MPa at
t = 0), threshold (MPa, detrended) and the steps they were fitted on.

The zero-phase low-pass (``sosfiltfilt``) runs over the whole record: its backward
pass carries a step's value to earlier steps, decaying by the filter's largest pole
radius per step (0.73 for the 4th-order 15 Hz filter at 100 Hz: below 1e-16 after
100 steps, 1 s). The validation part (at least one seismic cycle and one window)
lies between train and test, so nothing of the test part reaches the training
targets in float64 (``tests/test_data_targets.py`` checks it); filtering each part
on its own instead would add edge transients at every boundary. On the 10 Hz DDS
rows the filter is skipped (cutoff above Nyquist).
"""

import numpy as np
from scipy import signal

from labquake_tf.data.splits import PRETRAIN_RATIOS, parse_ratios, split_by_events

DEFAULT_LOWPASS_HZ = 15.0
DEFAULT_REL_DROP = 0.25
MAX_FIT_PASSES = 5


def lowpass(x, sample_rate, cutoff=DEFAULT_LOWPASS_HZ, order=4):
    """Zero-phase Butterworth low-pass; returns ``(y, applied)``.

    A cutoff at or above Nyquist (e.g. 15 Hz on the 10 Hz DDS rows) cannot be
    designed; the signal is returned unchanged and ``applied`` is False so the
    caller can record it instead of failing.
    """
    x = np.asarray(x, np.float64)
    if cutoff is None or cutoff >= 0.5 * sample_rate:
        return x, False
    sos = signal.butter(order, cutoff, btype="low", fs=sample_rate, output="sos")
    return signal.sosfiltfilt(sos, x), True


def detect_events(stress, min_drop=None, rel_drop=DEFAULT_REL_DROP):
    """Stick-slip events as ``(n_events, 2)`` step indices ``[onset, end]``.

    ``min_drop`` is the smallest stress drop (same units as ``stress``) counted as
    an event; by default ``rel_drop`` times the range of the linearly detrended
    stress, which tracks the loading trend out of the threshold.
    """
    stress = np.asarray(stress, np.float64)
    if min_drop is None:
        min_drop = rel_drop * np.ptp(signal.detrend(stress))
    if not min_drop > 0:
        return np.zeros((0, 2), np.int64)
    events = []
    peak = trough = 0
    looking_for_peak = True
    # A sequential scan: turning points depend on what came before, so this is
    # not vectorisable, but it runs once per record on ~1e4-1e6 steps.
    for i, s in enumerate(stress):
        if looking_for_peak:
            if s > stress[peak]:
                peak = i
            elif stress[peak] - s >= min_drop:
                looking_for_peak, trough = False, i
        else:
            if s < stress[trough]:
                trough = i
            elif s - stress[trough] >= min_drop:
                events.append((peak, trough))
                looking_for_peak, peak = True, i
    if not looking_for_peak:
        events.append((peak, trough))  # a slip that ends on the record's last rise
    return np.asarray(events, np.int64).reshape(-1, 2)


def time_to_failure(time, events, stress=None):
    """Derived TTsF / TTeF (s) and each one's mask of steps that have a next event.

    TTsF at step t counts down to the next onset at or after t, TTeF to the next
    end at or after t. After the last onset there is no next failure start to
    count down to (TTsF masked); after the last end no next failure end (TTeF
    masked): between the two, TTeF is a real label and TTsF is not.
    A record that starts mid-slip has an end before its first onset that the
    detector cannot pair with a peak; steps up to that first trough are masked
    for both, or TTeF would count to the wrong end.
    Returns ``(ttsf, ttef, {"ttsf": mask, "ttef": mask})``.
    """
    time = np.asarray(time, np.float64)
    steps = np.arange(len(time))
    ttsf, ok_s = _countdown(time, steps, events[:, 0])
    ttef, ok_e = _countdown(time, steps, events[:, 1])
    if stress is not None and len(events) and events[0, 0] > 0:
        lead = int(np.argmin(stress[:events[0, 0]])) + 1
        ok_s[:lead] = ok_e[:lead] = False
    return ttsf, ttef, {"ttsf": ok_s, "ttef": ok_e}


def _countdown(time, steps, marks):
    if len(marks) == 0:
        return np.zeros_like(time), np.zeros(len(time), bool)
    nxt = np.searchsorted(marks, steps, side="left")
    ok = nxt < len(marks)
    target = marks[np.minimum(nxt, len(marks) - 1)]
    return np.where(ok, time[target] - time, 0.0), ok


def published_ttf_mask(ttsf, ttef, events):
    """Rows of the DDS TimeToStart/EndFailure columns that are real labels, per column.

    Both columns are built by counting down to the next zero; after the last
    real onset (TTsF) or end (TTeF) they count down to the final row as if an
    event happened there, and row 0 of the files is a spurious ``0, 0`` (the
    next row restarts at the real countdown). Rows after the last detected onset
    (TTsF) or end (TTeF), and leading rows that do not continue the countdown,
    are not labels. Returns ``{"ttsf": mask, "ttef": mask}``.
    """
    n = len(ttsf)
    masks = {}
    for key, col in (("ttsf", 0), ("ttef", 1)):
        mask = np.zeros(n, bool)
        if len(events):
            mask[:events[-1, col] + 1] = True
        masks[key] = mask
    # A countdown decreases by one step per row; a leading row that is followed
    # by a larger value is the artefact of row 0.
    if n > 1 and (ttsf[1] > ttsf[0] or ttef[1] > ttef[0]):
        for mask in masks.values():
            mask[0] = False
    return masks


def fit_line(time, x):
    """Least-squares ``(slope, intercept)`` of ``x`` against ``time``."""
    slope, intercept = np.polyfit(np.asarray(time, np.float64), np.asarray(x, np.float64), 1)
    return float(slope), float(intercept)


def fit_on_train(time, stress, split=PRETRAIN_RATIOS, min_drop=None, rel_drop=DEFAULT_REL_DROP):
    """Detrend line and event threshold fitted on the training part of ``split``.

    ``stress`` is the filtered (not detrended) stress. Returns a dict: ``slope``
    (MPa/s), ``intercept`` (MPa at t = 0), ``min_drop`` (MPa, detrended; the given
    one if not None), ``fit_steps`` ``[0, stop)``, ``passes`` and ``converged``
    (see the module docstring for the iteration).
    """
    time, stress = np.asarray(time, np.float64), np.asarray(stress, np.float64)
    ratios = parse_ratios(split)
    n = len(time)
    stop = min(n, max(2, int(round(ratios[0] * n))))
    seen, fit = set(), None
    for passes in range(1, MAX_FIT_PASSES + 1):
        slope, intercept = fit_line(time[:stop], stress[:stop])
        residual = stress - (slope * time + intercept)
        threshold = float(rel_drop * np.ptp(residual[:stop])) if min_drop is None \
            else float(min_drop)
        fit = {"slope": slope, "intercept": intercept, "min_drop": threshold,
               "fit_steps": [0, stop], "passes": passes, "converged": False,
               "split": list(ratios)}
        seen.add(stop)
        try:
            parts = split_by_events(detect_events(residual, min_drop=threshold), n, ratios)
        except ValueError:  # too few events to split: prepare reports it
            break
        new_stop = parts["train"]["steps"][1]
        if new_stop == stop:
            fit["converged"] = True
            break
        if new_stop in seen:  # a cycle: keep the last fit
            break
        stop = new_stop
    return fit


def build_targets(time, shear_stress, lowpass_hz=DEFAULT_LOWPASS_HZ, detrend=False,
                  min_drop=None, rel_drop=DEFAULT_REL_DROP, published=None,
                  fit_split=PRETRAIN_RATIOS):
    """Targets, per-target label masks, events and a description of the processing.

    Shear stress is a label at every step (it is measured everywhere); the time
    to failure masks come from ``time_to_failure`` / ``published_ttf_mask``.
    The detrend line and the event threshold are fitted on the training part of
    ``fit_split`` (train, val, test ratios; see the module docstring).

    ``published``: optional ``(ttsf, ttef)`` columns to use instead of the
    derived countdowns (their artefact rows are masked).
    """
    time = np.asarray(time, np.float64)
    sample_rate = 1.0 / float(np.median(np.diff(time)))
    filtered_stress, filtered = lowpass(shear_stress, sample_rate, lowpass_hz)
    fit = fit_on_train(time, filtered_stress, fit_split, min_drop, rel_drop)
    trend = fit["slope"] * time + fit["intercept"]
    # Events are always found on the detrended stress (the trend is no stress drop);
    # the target keeps the trend with detrend=False.
    events = detect_events(filtered_stress - trend, min_drop=fit["min_drop"])
    stress = filtered_stress - trend if detrend else filtered_stress
    if published is None:
        ttsf, ttef, masks = time_to_failure(time, events, stress)
    else:
        ttsf, ttef = (np.asarray(c, np.float64) for c in published)
        masks = published_ttf_mask(ttsf, ttef, events)
    masks["shear_stress"] = np.isfinite(stress)
    info = {"sample_rate": sample_rate, "lowpass_hz": lowpass_hz, "lowpass_applied": filtered,
            "lowpass_note": None if filtered or lowpass_hz is None else
            f"skipped: cutoff {lowpass_hz} Hz >= Nyquist {0.5 * sample_rate:g} Hz",
            "detrend": bool(detrend), "ttf": "derived" if published is None else "published",
            "min_drop": fit["min_drop"], "rel_drop": rel_drop,
            "fit": {**fit, "on": "training part of the split",
                    "units": {"slope": "MPa/s", "intercept": "MPa", "min_drop": "MPa, detrended"}},
            "shear_stress_units": "MPa, detrended" if detrend else "MPa"}
    targets = {"shear_stress": stress, "ttsf": ttsf, "ttef": ttef}
    return targets, masks, events, info
