"""Split-conformal prediction intervals around an ensemble's mean, and their scores.

An interval is ``mean ± half``, with ``half = coef * spread + offset`` per target,
``spread`` the standard deviation of the ensemble members' predictions at that
window, all in physical units. Two conformity scores, each calibrated on
windows that neither fit the heads nor belong to test (``jobs.finetune``
chooses them; never test):

* ``constant``: score ``|y - mean|``; ``half = q`` (``coef=0``, ``offset=q``).
* ``normalized``: score ``|y - mean| / (spread + eps)``; ``half = q * (spread + eps)``,
  so windows where the members disagree get wider intervals. ``eps`` (a fraction of
  the median validation spread) keeps windows where they happen to agree from
  collapsing to zero width.

``q`` is the ``ceil((n + 1) * coverage) / n`` empirical quantile of the ``n``
calibration scores: with exchangeable scores the test coverage is at least
``coverage`` whatever the error distribution (split-conformal; Vovk et al. 2005,
Lei et al. 2018). Windows of one record are not exchangeable in time (errors
grow with the distance from the training events), so the guarantee is
approximate here; ``evaluate`` reports the coverage reached on test.

``choose`` picks the score by the interval score (Gneiting & Raftery 2007: width
plus ``2 / alpha`` times each miss) with a two-fold cross-fit over the two halves
of the calibration windows, so the choice too never sees test.
"""

import math

import numpy as np

SCORES = ("constant", "normalized")
EPS_FRACTION = 0.1
"""``eps`` of the normalized score, as a fraction of the median validation spread."""


def check_coverage(coverage):
    """``coverage`` as a float in (0, 1), or ValueError naming the option."""
    try:
        coverage = float(coverage)
    except (TypeError, ValueError):
        raise ValueError(f"coverage must be a number in (0, 1), got {coverage!r}") from None
    if not 0.0 < coverage < 1.0:
        raise ValueError(f"coverage must be in (0, 1) (e.g. 0.9), got {coverage!r}")
    return coverage


def conformal_quantile(scores, coverage):
    """The finite-sample split-conformal quantile: the ``ceil((n+1)·coverage)``-th
    smallest score; ``inf`` when there are too few scores for that coverage."""
    coverage = check_coverage(coverage)
    scores = np.sort(np.asarray(scores, np.float64).ravel())
    if scores.size == 0 or not np.all(np.isfinite(scores)):
        raise ValueError("conformal calibration needs at least one finite score")
    k = math.ceil((scores.size + 1) * coverage)
    return float(scores[k - 1]) if k <= scores.size else math.inf


def fit(y, mean, spread, coverage, score="constant"):
    """Per-target ``{"score", "q", "eps", "coef", "offset"}`` from calibration arrays
    ``(n, n_targets)`` in physical units."""
    if score not in SCORES:
        raise ValueError(f"interval score must be one of {SCORES}, got {score!r}")
    y, mean, spread = (np.asarray(a, np.float64).reshape(len(y), -1) for a in (y, mean, spread))
    params = []
    for j in range(y.shape[1]):
        err = np.abs(y[:, j] - mean[:, j])
        if score == "constant":
            q = conformal_quantile(err, coverage)
            params.append({"score": score, "q": q, "eps": 0.0, "coef": 0.0, "offset": q})
        else:
            eps = EPS_FRACTION * float(np.median(spread[:, j]))
            if not eps > 0:
                raise ValueError("normalized intervals need an ensemble whose members disagree "
                                 "(spread is zero: one member, or identical members)")
            q = conformal_quantile(err / (spread[:, j] + eps), coverage)
            params.append({"score": score, "q": q, "eps": eps, "coef": q, "offset": q * eps})
    return params


def bounds(mean, spread, params):
    """``(lower, upper)`` arrays shaped like ``mean`` ``(n, n_targets)``."""
    mean, spread = np.asarray(mean, np.float64), np.asarray(spread, np.float64)
    coef = np.array([p["coef"] for p in params])
    offset = np.array([p["offset"] for p in params])
    half = coef * spread + offset
    return mean - half, mean + half


def interval_score(y, lower, upper, coverage):
    """Mean interval score (lower is better): width + (2/alpha) x distance outside."""
    alpha = 1.0 - check_coverage(coverage)
    y, lower, upper = (np.asarray(a, np.float64) for a in (y, lower, upper))
    miss = np.maximum(lower - y, 0) + np.maximum(y - upper, 0)
    return float(np.mean(upper - lower + 2.0 / alpha * miss))


def summary(y, lower, upper):
    """``{"coverage", "width"}``: share of truths inside ``[lower, upper]``, mean width."""
    y, lower, upper = (np.asarray(a, np.float64) for a in (y, lower, upper))
    inside = (y >= lower) & (y <= upper)
    return {"coverage": float(np.mean(inside)), "width": float(np.mean(upper - lower))}


def choose(y, mean, spread, coverage):
    """``(score, report)``: the score with the lower cross-fitted interval score on the
    calibration windows (first half calibrates the second and vice versa).

    Only ``constant`` is possible when the members never disagree (one member).
    """
    y, mean, spread = (np.asarray(a, np.float64).reshape(len(y), -1) for a in (y, mean, spread))
    candidates = list(SCORES) if np.median(spread) > 0 else ["constant"]
    half = len(y) // 2
    folds = [(slice(0, half), slice(half, None)), (slice(half, None), slice(0, half))]
    report = {}
    for score in candidates:
        values, cover, width = [], [], []
        for cal, held in folds:
            params = fit(y[cal], mean[cal], spread[cal], coverage, score)
            lo, hi = bounds(mean[held], spread[held], params)
            values.append(interval_score(y[held], lo, hi, coverage))
            s = summary(y[held], lo, hi)
            cover.append(s["coverage"])
            width.append(s["width"])
        report[score] = {"interval_score": float(np.mean(values)),
                         "coverage": float(np.mean(cover)), "width": float(np.mean(width))}
    best = min(candidates, key=lambda s: report[s]["interval_score"])
    return best, report
