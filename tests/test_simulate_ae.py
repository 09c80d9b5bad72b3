import dataclasses

import numpy as np
import pytest

from labquake_tf.data.features import log_variance
from labquake_tf.simulate import ae, resolve_config, simulate_fault

CONFIG = resolve_config("biaxial")
PARAMS = CONFIG.ae


@pytest.fixture(scope="module")
def history():
    """~4 biaxial cycles on the 1 ms solver grid."""
    return simulate_fault(CONFIG.fault, 80.0, dt=CONFIG.step, seed=0, spinup=40.0)


@pytest.fixture(scope="module")
def events(history):
    return ae.sample_events(history, PARAMS, np.random.default_rng(0))


def test_event_rate_follows_slip_rate_and_stress_up_to_the_cap():
    vl, ref = 10.0, 3.0
    base = ae.event_rate(vl, ref, PARAMS, vl, ref)
    assert base == pytest.approx(PARAMS.rate)
    assert ae.event_rate(2 * vl, ref, PARAMS, vl, ref) == pytest.approx(2 * base)  # p = 1
    assert ae.event_rate(vl, ref + 0.1, PARAMS, vl, ref) == pytest.approx(
        base * np.exp(0.1 * PARAMS.stress_sensitivity))
    assert ae.event_rate(1e6 * vl, ref, PARAMS, vl, ref) == pytest.approx(PARAMS.max_rate)


@pytest.mark.parametrize("b", [0.7, 1.4])
def test_gutenberg_richter_magnitudes_recover_their_b_value(b):
    m = ae.gutenberg_richter(np.full(40000, b), 2.5, np.random.default_rng(1))
    assert m.min() >= 0 and m.max() <= 2.5
    assert ae.aki_b_value(m, max_magnitude=2.5) == pytest.approx(b, rel=0.04)
    # Ignoring the truncation biases b upward (the missing large events).
    assert ae.aki_b_value(m) > ae.aki_b_value(m, max_magnitude=2.5)


def test_b_value_of_generated_events_falls_with_stress(history, events):
    stress = np.interp(events.time, history.time, history.shear_stress)
    low, high = np.quantile(stress, [1 / 3, 2 / 3])
    b_low, b_high = (ae.aki_b_value(events.magnitude[sel], PARAMS.max_magnitude)
                     for sel in (stress <= low, stress >= high))
    assert b_low > b_high + 0.2
    ref = CONFIG.fault.steady_state_stress
    for sel, b in ((stress <= low, b_low), (stress >= high, b_high)):
        assert b == pytest.approx(ae.b_value(stress[sel], PARAMS, ref).mean(), rel=0.1)


def test_log_variance_rises_through_each_cycle_and_peaks_at_failure(history, events):
    logvar = ae.window_logvar(events, PARAMS, 80.0, CONFIG.hop, CONFIG.window)[:, 0]
    t = CONFIG.window + CONFIG.hop * np.arange(len(logvar))
    smooth = np.convolve(logvar, np.ones(50) / 50, mode="same")  # 0.5 s
    onsets, ends = history.events.T
    assert len(onsets) >= 3
    for prev_end, onset, end in zip(ends[:-1], onsets[1:], ends[1:]):
        loading = onset - prev_end
        early = (t > prev_end + 1.0) & (t < prev_end + 0.3 * loading)
        late = (t > onset - 0.3 * loading) & (t < onset)
        assert logvar[late].mean() > logvar[early].mean() + 1.0
        cycle = (t > prev_end + 1.0) & (t < end + 1.0)
        peak = t[cycle][np.argmax(smooth[cycle])]
        assert onset - 0.5 <= peak <= end + 0.5


def test_direct_features_match_the_materialised_waveform(history, events):
    params = dataclasses.replace(PARAMS, sample_rate=20000.0)
    duration = 40.0  # covers a failure: quiet and busy windows both
    part = events.select(events.time < duration)
    direct = ae.window_logvar(part, params, duration)
    rng = np.random.default_rng(2)
    wave = np.concatenate(list(ae.waveform_chunks(part, params, duration, rng)))
    assert wave.shape == (int(duration * 20000), 1) and wave.dtype == np.float32
    measured = log_variance(wave, 20000.0)
    assert measured.shape == direct.shape == (int((duration - 0.1) / 0.01) + 1, 1)
    diff = np.abs(measured - direct)[:, 0]
    assert np.ptp(direct) > 3.0
    assert np.median(diff) < 0.03 and np.quantile(diff, 0.99) < 0.25
    assert np.corrcoef(measured[:, 0], direct[:, 0])[0, 1] > 0.995
    # Unbiased: the same total energy, also where bursts straddle window edges.
    total = np.sum(10.0 ** measured.astype(np.float64)) / np.sum(10.0 ** direct.astype(np.float64))
    assert total == pytest.approx(1.0, abs=0.015)
    busy = direct[:, 0] > 2 * np.log10(PARAMS.noise_std) + 1
    assert abs(np.mean(measured[busy] - direct[busy])) < 0.01


def test_waveform_does_not_depend_on_chunking(events):
    params = dataclasses.replace(PARAMS, sample_rate=20000.0, n_channels=2)
    part = events.select(events.time < 2.0)
    whole = np.concatenate(list(ae.waveform_chunks(part, params, 2.0, np.random.default_rng(3))))
    pieces = np.concatenate(list(ae.waveform_chunks(part, params, 2.0, np.random.default_rng(3),
                                                    chunk_samples=997)))
    np.testing.assert_allclose(pieces, whole, atol=1e-4)


def test_further_channels_see_attenuated_bursts_over_the_same_noise(events):
    params = dataclasses.replace(PARAMS, n_channels=2)
    var = 10.0 ** ae.window_logvar(events, params, 80.0).astype(np.float64)
    bursts = var - params.noise_std ** 2
    busy = bursts[:, 0] > 100 * params.noise_std ** 2
    np.testing.assert_allclose(bursts[busy, 1] / bursts[busy, 0], params.channel_attenuation ** 2,
                               rtol=1e-3)


@pytest.mark.parametrize("change, match", [(dict(frequency=12e3, sample_rate=20e3), "Nyquist"),
                                           (dict(n_channels=0), "n_channels"),
                                           (dict(b_min=0.0), "b_min")])
def test_bad_ae_parameters_are_named(change, match):
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(PARAMS, **change)


def test_windows_must_be_whole_hops_longer_than_a_burst(events):
    with pytest.raises(ValueError, match="multiple of hop"):
        ae.window_logvar(events, PARAMS, 10.0, hop=0.01, window=0.105)
    with pytest.raises(ValueError, match="whole number of samples"):
        ae.window_logvar(events, PARAMS, 10.0, hop=1e-5 / 3)
