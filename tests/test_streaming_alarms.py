import numpy as np
import pytest

from labquake_tf.errors import UsageError
from labquake_tf.streaming.alarms import Alarm, score_alarms


class _Predictions:
    def __init__(self, time, ttsf):
        self.time = np.asarray(time, float)
        self.values = {"ttsf": np.asarray(ttsf, float)}


@pytest.mark.parametrize("spec, needle", [
    ("ttsf~1", "expected NAME<VALUE"),
    ("ttsf<1.2.3", "'1.2.3' is not a number"),
    ("stress<1", "the model predicts ['ttsf'], not 'stress'"),
])
def test_a_bad_alarm_is_a_usage_error_naming_the_spec(spec, needle):
    with pytest.raises(UsageError, match="alarm") as err:
        Alarm.parse(spec, ["ttsf"])
    assert needle in str(err.value) and UsageError.exit_code == 2


def test_an_alarm_fires_once_per_crossing_into_its_condition_across_chunks():
    alarm = Alarm.parse(" ttsf <= 1.0 ", ["ttsf"])
    assert (alarm.name, alarm.op, alarm.threshold, str(alarm)) == ("ttsf", "<=", 1.0, "ttsf<=1")
    first = alarm.update(_Predictions([0, 1, 2, 3], [3.0, 1.0, 0.5, 2.0]))
    # Still inside the condition at the chunk boundary: no second firing at t=4.
    second = alarm.update(_Predictions([4, 5, 6, 7], [2.0, 0.9, 0.8, 0.2]))
    assert first == [(1.0, 1.0)] and second == [(5.0, 0.9)]
    alarm.update(_Predictions([8], [0.1]))
    alarm.reset()
    assert alarm.update(_Predictions([9], [0.1])) == [(9.0, 0.1)]


def test_score_alarms_counts_warned_events_leads_and_false_alarms():
    result = score_alarms([1.0, 4.0, 9.5, 20.0], onsets=[5.0, 10.0, 30.0], t_start=0.0,
                          t_end=25.0, max_lead=2.0)
    # In [0, 25]: onsets 5 and 10 (30 is outside). Alarm 1 leads by 4 s > 2 s and 20 has no
    # failure after it: false. 4 and 9.5 warn 5 and 10 by 1 and 0.5 s.
    assert (result["events"], result["warned"], result["alarms"], result["false_alarms"]) == (2, 2, 4, 2)
    assert result["lead_times_s"] == [1.0, 0.5] and result["median_lead_s"] == 0.75
    assert result["fraction_warned"] == 1.0
    assert result["false_alarms_per_min"] == pytest.approx(2 / (25 / 60))
