import math

import numpy as np
import pytest

from labquake_tf.evaluation import intervals


def test_conformal_quantile_is_the_finite_sample_order_statistic():
    scores = np.arange(1.0, 11.0)  # 10 scores
    # ceil(11 * 0.5) = 6th smallest
    assert intervals.conformal_quantile(scores[::-1], 0.5) == 6.0
    assert intervals.conformal_quantile(scores, 0.9) == 10.0  # ceil(9.9) = 10
    assert intervals.conformal_quantile(scores, 0.95) == math.inf  # ceil(10.45) = 11 > 10


@pytest.mark.parametrize("coverage", [0.0, 1.0, -0.1, 1.5, "x", None])
def test_bad_coverage_is_refused(coverage):
    with pytest.raises(ValueError, match="coverage"):
        intervals.check_coverage(coverage)


def test_constant_interval_reaches_its_coverage_on_gaussian_noise():
    # Split conformal with n calibration scores covers a fresh point with probability
    # Beta(k, n + 1 - k) around the target (sd <= sqrt(c (1 - c) / n)); the test
    # points add binomial noise. 4 sd of both bound the miss.
    rng = np.random.default_rng(0)
    n_cal, n_test, coverage = 800, 20000, 0.9
    mean_cal, mean_test = rng.normal(size=(n_cal, 1)), rng.normal(size=(n_test, 1))
    y_cal = mean_cal + rng.normal(0, 0.3, (n_cal, 1))
    y_test = mean_test + rng.normal(0, 0.3, (n_test, 1))
    params = intervals.fit(y_cal, mean_cal, np.zeros_like(mean_cal), coverage, "constant")
    lo, hi = intervals.bounds(mean_test, np.zeros_like(mean_test), params)
    result = intervals.summary(y_test[:, 0], lo[:, 0], hi[:, 0])
    tol = 4 * math.sqrt(coverage * (1 - coverage) * (1 / n_cal + 1 / n_test))
    assert abs(result["coverage"] - coverage) < tol
    # the Gaussian 90 % half-width is 1.645 sigma
    assert result["width"] == pytest.approx(2 * 1.645 * 0.3, rel=0.1)


def test_normalized_interval_adapts_to_known_spread_and_is_chosen_for_it():
    rng = np.random.default_rng(1)
    n, coverage = 4000, 0.9
    sigma = rng.uniform(0.05, 1.0, (n, 1))  # heteroscedastic noise, its sd known ("spread")
    mean = rng.normal(size=(n, 1))
    y = mean + rng.normal(size=(n, 1)) * sigma
    cal, test = slice(0, n // 2), slice(n // 2, None)
    widths = {}
    for score in intervals.SCORES:
        params = intervals.fit(y[cal], mean[cal], sigma[cal], coverage, score)
        lo, hi = intervals.bounds(mean[test], sigma[test], params)
        s = intervals.summary(y[test, 0], lo[:, 0], hi[:, 0])
        assert abs(s["coverage"] - coverage) < 4 * math.sqrt(0.09 * 2 / (n // 2))
        widths[score] = s["width"]
    assert widths["normalized"] < 0.9 * widths["constant"]
    assert intervals.choose(y, mean, sigma, coverage)[0] == "normalized"
    # a spread that says nothing about the error: the constant width wins
    noise = mean + rng.normal(0, 0.3, (n, 1))
    best, report = intervals.choose(noise, mean, rng.uniform(0.05, 1.0, (n, 1)), coverage)
    assert best == "constant"
    assert report["constant"]["interval_score"] < report["normalized"]["interval_score"]


def test_single_member_has_no_spread_so_only_constant():
    y, mean = np.ones((10, 1)), np.zeros((10, 1))
    assert intervals.choose(y, mean, np.zeros((10, 1)), 0.8)[0] == "constant"
    with pytest.raises(ValueError, match="members disagree"):
        intervals.fit(y, mean, np.zeros((10, 1)), 0.8, "normalized")
    with pytest.raises(ValueError, match="interval score"):
        intervals.fit(y, mean, np.zeros((10, 1)), 0.8, "gaussian")
