import numpy as np
import pytest

from labquake_tf.evaluation.events import cycles, event_scores


def _series():
    # failures at t=4 and t=9; the first cycle predicted 1 s late, the second 2 s early
    time = np.arange(10.0)
    true = np.array([4, 3, 2, 1, 0, 4, 3, 2, 1, 0], float)
    pred = true + np.array([1] * 5 + [-2] * 5, float)
    return time, true, pred


def test_cycles_follow_the_true_failure_time():
    time, true, _ = _series()
    np.testing.assert_array_equal(cycles(time, true), [0] * 5 + [1] * 5)
    # label rounding smaller than half a step does not split a cycle
    np.testing.assert_array_equal(cycles(time, true + np.r_[0.1, 0, -0.1, 0, 0, 0, 0, 0, 0, 0]),
                                  [0] * 5 + [1] * 5)


def test_event_scores_on_a_hand_made_series():
    time, true, pred = _series()
    pred[3] = true[3] + 3  # one bad step in cycle 0: |errors| 1,1,1,3,1
    scores = event_scores(time, true, pred)
    assert scores["n_events"] == 2
    first, second = scores["events"]
    assert first["failure_time"] == 4.0 and second["failure_time"] == 9.0
    assert first["n_steps"] == 5
    assert first["mae_s"] == pytest.approx(7 / 5) and first["bias_s"] == pytest.approx(7 / 5)
    assert second["mae_s"] == pytest.approx(2.0) and second["bias_s"] == pytest.approx(-2.0)
    assert second["final_error_s"] == pytest.approx(-2.0)
    assert scores["mae_s"] == pytest.approx((7 / 5 + 2) / 2)
    assert scores["bias_s"] == pytest.approx((7 / 5 - 2) / 2)
    assert scores["median_abs_error_s"] == pytest.approx(2.0)  # of 1,1,1,3,1,2,2,2,2,2
    assert scores["final_abs_error_s"] == pytest.approx(1.5)


def test_perfect_predictions_score_zero_and_bad_shapes_are_refused():
    time, true, _ = _series()
    assert event_scores(time, true, true)["mae_s"] == 0.0
    with pytest.raises(ValueError, match="ttf_pred has 9 steps"):
        event_scores(time, true, true[:9])
    with pytest.raises(ValueError, match="must be equal 1-D shapes"):
        cycles(time, true[:5])
