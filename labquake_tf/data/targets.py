"""Shear stress → model targets: low-pass, detrend, stick-slip events, time to failure.

Events are found on the (filtered, detrended) stress with a zig-zag turning-point
detector: a peak is confirmed once stress falls ``min_drop`` below it, a trough
once stress rises ``min_drop`` above it. A stick-slip event is a confirmed peak
(the stress peak before the drop) and the trough after it (the end of slip). With
``min_drop`` a fraction of the stress range, small precursory slips and noise
never reach the threshold, and the defaults give the 31 large events of p4581 and
the 46 of p5198.
"""

import numpy as np
from scipy import signal

DEFAULT_LOWPASS_HZ = 15.0
DEFAULT_REL_DROP = 0.25


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


def build_targets(time, shear_stress, lowpass_hz=DEFAULT_LOWPASS_HZ, detrend=True,
                  min_drop=None, rel_drop=DEFAULT_REL_DROP, published=None):
    """Targets, per-target label masks, events and a description of the processing.

    Shear stress is a label at every step (it is measured everywhere); the time
    to failure masks come from ``time_to_failure`` / ``published_ttf_mask``.

    ``published``: optional ``(ttsf, ttef)`` columns to use instead of the
    derived countdowns (their artefact rows are masked).
    """
    time = np.asarray(time, np.float64)
    sample_rate = 1.0 / float(np.median(np.diff(time)))
    stress, filtered = lowpass(shear_stress, sample_rate, lowpass_hz)
    if detrend:
        stress = signal.detrend(stress, type="linear")
    if min_drop is None:  # resolved here so the manifest records the threshold used
        min_drop = float(rel_drop * np.ptp(signal.detrend(stress)))
    events = detect_events(stress, min_drop=min_drop)
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
            "min_drop": min_drop, "rel_drop": rel_drop}
    targets = {"shear_stress": stress, "ttsf": ttsf, "ttef": ttef}
    return targets, masks, events, info
