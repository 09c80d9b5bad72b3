import numpy as np
import pytest
from scipy import signal

from labquake_tf.data import readers, splits, targets


def test_lowpass_removes_high_frequency_and_keeps_phase():
    fs = 100.0
    t = np.arange(0, 20, 1 / fs)
    slow, fast = np.sin(2 * np.pi * 0.5 * t), 0.5 * np.sin(2 * np.pi * 40 * t)
    y, applied = targets.lowpass(slow + fast, fs, cutoff=15.0)
    assert applied
    inner = slice(200, -200)  # away from the filter's edge transients
    assert np.abs(y[inner] - slow[inner]).max() < 0.01  # zero phase: no lag on the slow part


def test_lowpass_at_or_above_nyquist_is_skipped_not_failed():
    x = np.random.default_rng(0).normal(size=100)
    y, applied = targets.lowpass(x, 10.0, cutoff=15.0)
    assert not applied and np.array_equal(y, x)


def test_build_targets_detrends_and_records_skipped_filter():
    time = np.arange(0, 100, 0.1)
    stress = 0.01 * time + 0.05 * np.sin(time)
    out, _, _, info = targets.build_targets(time, stress, lowpass_hz=15.0, detrend=True)
    # the line is fitted on the training part (about 70 % of the sine's "events")
    stop = info["fit"]["fit_steps"][1]
    assert info["fit"]["fit_steps"][0] == 0 and 600 < stop < 800
    slope, intercept = np.polyfit(time[:stop], stress[:stop], 1)
    assert info["fit"]["slope"] == pytest.approx(slope) and info["fit"]["units"]["slope"] == "MPa/s"
    np.testing.assert_allclose(out["shear_stress"], stress - (slope * time + intercept), atol=1e-12)
    assert info["shear_stress_units"] == "MPa, detrended"
    assert info["lowpass_applied"] is False and "Nyquist" in info["lowpass_note"]
    # By default the target is the stress as measured; the line still places the threshold.
    plain, _, _, info = targets.build_targets(time, stress)
    np.testing.assert_array_equal(plain["shear_stress"], stress)
    assert info["shear_stress_units"] == "MPa" and info["fit"]["slope"] == pytest.approx(slope)


def test_detrend_and_threshold_are_fitted_on_the_training_part_only():
    """A change confined to the test part (a bigger drop, a steep trend) leaves every
    training target as it was: line, threshold and low-pass see no test data."""
    dt, n_cycles, period = 0.01, 20, 150  # 100 Hz: the 15 Hz low-pass applies
    stress, _ = _sawtooth(n_cycles, period, noise=0.01)
    time = np.arange(len(stress)) * dt
    stress = stress + 0.05 * time  # loading trend
    changed = stress.copy()
    test_start = 16 * period + 100  # within the last 4 cycles (the 20 % test part)
    changed[test_start:] = 1.6 * stress[test_start:] + 0.3 * (time[test_start:] - time[test_start])
    out = [targets.build_targets(time, s, fit_split=(0.7, 0.1, 0.2), detrend=True)
           for s in (stress, changed)]
    (t0, m0, e0, i0), (t1, m1, e1, i1) = out
    assert i0["lowpass_applied"] and i0["fit"]["converged"]
    assert i0["fit"] == i1["fit"] and len(e0) == len(e1) == n_cycles
    parts = splits.split_by_events(e0, len(time), (0.7, 0.1, 0.2))
    assert parts == splits.split_by_events(e1, len(time), (0.7, 0.1, 0.2))
    train = slice(*parts["train"]["steps"])
    assert parts["test"]["steps"][0] < test_start and i0["fit"]["fit_steps"] == parts["train"]["steps"]
    for key in ("shear_stress", "ttsf", "ttef"):
        np.testing.assert_array_equal(t0[key][train], t1[key][train])
        np.testing.assert_array_equal(m0[key][train], m1[key][train])
    assert not np.allclose(t0["shear_stress"][test_start:], t1["shear_stress"][test_start:])
    # Fitted on the whole record, as before, the training targets would have moved.
    whole = [signal.detrend(s)[train] for s in (stress, changed)]
    assert np.abs(whole[0] - whole[1]).max() > 0.05


def _sawtooth(n_cycles=5, period=100, drop=1.0, noise=0.002, seed=0):
    """Linear loading then a 5-step slip; returns stress and true [onset, end]."""
    rise = np.linspace(0, drop, period - 5, endpoint=False)
    slip = np.linspace(drop, 0, 6)[1:]
    cycle = np.concatenate([rise, slip])
    stress = np.tile(cycle, n_cycles) + np.random.default_rng(seed).normal(0, noise, n_cycles * period)
    truth = [(k * period + np.argmax(cycle), k * period + period - 1) for k in range(n_cycles)]
    return stress, np.array(truth)


def test_detect_events_finds_onset_peak_and_end_minimum():
    stress, truth = _sawtooth()
    events = targets.detect_events(stress)
    assert events.shape == (5, 2)
    assert np.all(np.abs(events - truth) <= 2)
    assert np.all(stress[events[:, 0]] - stress[events[:, 1]] > 0.9)


def test_detect_events_threshold_is_configurable():
    stress, _ = _sawtooth()
    assert len(targets.detect_events(stress, min_drop=2.0)) == 0
    assert len(targets.detect_events(stress, min_drop=0.5)) == 5


def test_derived_time_to_failure_counts_down_and_masks_after_last_event():
    time = np.arange(10) * 0.5
    events = np.array([[3, 5], [7, 8]])
    ttsf, ttef, masks = targets.time_to_failure(time, events)
    np.testing.assert_allclose(ttsf[:8], [1.5, 1.0, 0.5, 0, 1.5, 1.0, 0.5, 0])
    np.testing.assert_allclose(ttef[:9], [2.5, 2.0, 1.5, 1.0, 0.5, 0, 1.0, 0.5, 0])
    # After the last onset TTsF has nothing to count down to; TTeF still does until the last end.
    assert masks["ttsf"].tolist() == [True] * 8 + [False] * 2
    assert masks["ttef"].tolist() == [True] * 9 + [False] * 1


@pytest.mark.parametrize("name,n_events", [("p4581", 31), ("p5198", 46)])
def test_dds_event_detection_matches_published_columns(dds_dir, name, n_events):
    record = readers.read(dds_dir / f"{name}.csv")
    assert record.events.shape == (n_events, 2)
    rows = np.genfromtxt(dds_dir / f"{name}.csv", delimiter=",", skip_header=1)
    ttsf, ttef = rows[:, 7], rows[:, 8]  # TimeToStartFailure, TimeToEndFailure
    # The published countdowns reach 0 exactly at the detected onset and end rows.
    assert np.all(ttsf[record.events[:, 0]] == 0) and np.all(ttef[record.events[:, 1]] == 0)


@pytest.mark.parametrize("name", ["p4581", "p5198"])
def test_dds_ttf_artefacts_are_masked_per_target(dds_dir, name):
    record = readers.read(dds_dir / f"{name}.csv")
    for key, col in (("ttsf", 0), ("ttef", 1)):
        last = record.events[-1, col]
        mask = record.label_mask[key]
        assert not mask[0]  # row 0 is a spurious 0,0 before the real countdown
        assert not mask[last + 1:].any()  # counting down to a non-existent final event
        assert mask[1:last + 1].all()
    # Shear stress is measured on every row, the last loading phase included.
    assert record.label_mask["shear_stress"].all()
    # Derived labels agree with the published ones wherever both are labels.
    derived = readers.read(dds_dir / f"{name}.csv", ttf="derived")
    for key in ("ttsf", "ttef"):
        both = record.label_mask[key] & derived.label_mask[key]
        assert both.sum() > 0.9 * len(record)
        assert np.abs(derived.targets[key][both] - record.targets[key][both]).max() < 0.1
