import keras
import numpy as np
import pytest

from labquake_tf.data.features import log_variance
from labquake_tf.data.scaling import MinMaxScaler
from labquake_tf.models import build_tcn
from labquake_tf.streaming import Streamer
from labquake_tf.task import LabquakeRegressor

RATE = 1000.0  # Hz: 0.1 s windows of 100 samples, 0.01 s hops of 10


@pytest.fixture(scope="module")
def setup():
    keras.utils.set_random_seed(0)
    model = build_tcn(8, n_features=1, n_targets=2, filters=6, kernel_size=3, blocks=2,
                      dropout=0.0, streamable=True)
    manifest = {"feature_names": ["logvar_ch2"], "target_names": ["shear_stress", "ttsf"],
                "dt": 0.01,
                "scaler": {"features": {"min": [1.0], "max": [4.0], "names": ["logvar_ch2"]},
                           "targets": {"min": [1.0, 0.0], "max": [2.0, 8.0],
                                       "names": ["shear_stress", "ttsf"]}}}
    rng = np.random.default_rng(0)
    n = 4000
    envelope = 50 + 40 * np.sin(np.arange(n) / 300.0)
    ae = np.stack([rng.normal(0, 5, n), rng.normal(0, 1, n) * envelope], axis=1).astype(np.int16)
    return model, manifest, ae


def _task(model, manifest, intervals=None):
    return LabquakeRegressor.from_manifest(model, {**manifest, "intervals": intervals})


def _offline(model, manifest, logvar, t_end):
    """model.predict on every window of the record's features, in physical units."""
    x = MinMaxScaler.from_dict(manifest["scaler"]["features"]).transform(logvar)
    length = model.input_shape[1]
    windows = np.stack([x[i:i + length] for i in range(len(x) - length + 1)])
    y = MinMaxScaler.from_dict(manifest["scaler"]["targets"]).inverse_transform(
        model.predict(windows, verbose=0))
    return t_end[length - 1:], y


def _feed(streamer, ae, seed):
    rng = np.random.default_rng(seed)
    parts, i = [], 0
    while i < len(ae):
        n = int(rng.choice([0, 1, 7, 10, 33, 250, 1500]))  # shorter and longer than a hop
        parts.append(streamer.update(ae[i:i + n]))
        i += n
    return parts


@pytest.mark.parametrize("engine", ["incremental", "windowed"])
def test_raw_ae_in_random_chunks_matches_predict_on_the_record(setup, engine):
    model, manifest, ae = setup
    logvar = log_variance(ae[:, 1:2], RATE)
    time = np.arange(1, len(logvar) + 1) * 0.01 + 0.09 + 5.0  # window ends, t0 = 5 s
    t_exp, y_exp = _offline(model, manifest, logvar, time)
    streamer = _task(model, manifest).streamer(engine=engine, sample_rate=RATE, t0=5.0)
    assert streamer.warmup_steps == 8 + 2 * 2 * 3
    parts = _feed(streamer, ae, seed=1)
    assert sum(len(p) for p in parts) == len(t_exp)
    got = np.concatenate([np.stack([p.values["shear_stress"], p.values["ttsf"]], 1)
                          for p in parts])
    np.testing.assert_allclose(np.concatenate([p.time for p in parts]), t_exp, atol=1e-9)
    # 1e-5 of the scaled outputs = 1e-5 x (max - min) in physical units
    assert np.abs(got - y_exp).max() < 1e-5 * 8
    assert streamer.resets == []
    row = next(parts[[len(p) > 0 for p in parts].index(True)].rows())
    assert set(row) == {"time", "shear_stress", "ttsf"}


def test_non_finite_samples_reset_and_later_windows_never_see_them(setup):
    model, manifest, ae = setup
    ae = ae.astype(np.float32)
    bad = 2003
    ae[bad, 1] = np.nan
    seen = []
    streamer = Streamer(_task(model, manifest), sample_rate=RATE,
                        on_reset=lambda t, r: seen.append(r))
    parts = _feed(streamer, ae, seed=2)
    assert len(streamer.resets) == 1 and seen == ["non-finite AE sample"]
    assert streamer.resets[0][0] == pytest.approx(bad / RATE)
    times = np.concatenate([p.time for p in parts])
    values = np.concatenate([p.values["ttsf"] for p in parts])
    assert np.all(np.isfinite(values))
    before, after = times <= bad / RATE, times > bad / RATE
    # After the reset: the record restarted at the next sample, a full warm-up later.
    lv = log_variance(ae[bad + 1:, 1:2], RATE)
    t_after = (bad + 1) / RATE + np.arange(1, len(lv) + 1) * 0.01 + 0.09
    t_exp, y_exp = _offline(model, manifest, lv, t_after)
    np.testing.assert_allclose(times[after], t_exp, atol=1e-9)
    assert np.abs(values[after] - y_exp[:, 1]).max() < 1e-4
    assert before.sum() > 0 and times[after][0] - bad / RATE > streamer.warmup_steps * 0.01


def test_feature_replay_gaps_reset_and_bad_input_is_refused(setup):
    model, manifest, _ = setup
    rng = np.random.default_rng(3)
    steps = rng.uniform(1, 4, size=(100, 1))
    time = np.arange(100) * 0.01
    time[60:] += 0.5  # a 0.5 s gap
    streamer = Streamer(_task(model, manifest))
    out = streamer.update_features(steps[:30], time[:30])
    out2 = streamer.update_features(steps[30:], time[30:])
    assert [r for _, r in streamer.resets] == ["gap in time stamps: 0.59 s -> 1.1 s"]
    t = np.concatenate([out.time, out2.time])
    warm = streamer.warmup_steps
    expected = np.concatenate([time[warm - 1:60], time[60 + warm - 1:]])
    np.testing.assert_allclose(t, expected)
    with pytest.raises(ValueError, match=r"takes \(n, 1\)"):
        streamer.update_features(np.zeros((4, 2)))
    with pytest.raises(ValueError, match="needs sample_rate"):
        streamer.update(np.zeros((10, 2), np.int16))
    raw = Streamer(_task(model, manifest), sample_rate=RATE)
    with pytest.raises(ValueError, match=r"1 channel\(s\).*channel\(s\) \[2\]"):
        raw.update(np.zeros((10, 1), np.int16))
    # a bare network has no preprocessor: no scalers to stream with
    with pytest.raises(TypeError, match="Streamer takes a LabquakeRegressor.*got Functional"):
        Streamer(model)


def test_default_time_stamps_run_on_across_a_reset(setup):
    model, manifest, _ = setup
    steps = np.random.default_rng(4).uniform(1, 4, size=(50, 1))
    streamer = Streamer(_task(model, manifest), t0=2.0)
    first = streamer.update_features(steps)
    assert first.time[0] == pytest.approx(2.0 + (streamer.warmup_steps - 1) * 0.01)
    streamer.reset(2.5, "operator")
    again = streamer.update_features(steps)
    assert streamer.resets == [(2.5, "operator")]
    assert again.time[0] == pytest.approx(2.5 + (streamer.warmup_steps - 1) * 0.01)
    np.testing.assert_allclose(again.scaled, first.scaled, atol=1e-6)


def test_interval_outputs_where_the_task_has_constant_width_ones(setup):
    model, manifest, _ = setup
    both = {"method": "split-conformal", "targets": {
        "ttsf": {"score": "constant", "q": 0.5, "coef": 0.0, "offset": 0.5},
        "shear_stress": {"score": "constant", "q": 0.1, "coef": 0.0, "offset": 0.1}}}
    out = _task(model, manifest, both).streamer().update_features(np.full((30, 1), 2.5))
    assert list(out.values) == ["shear_stress", "shear_stress_lower", "shear_stress_upper",
                                "ttsf", "ttsf_lower", "ttsf_upper"]
    np.testing.assert_allclose(out.values["ttsf_upper"] - out.values["ttsf"], 0.5)
    np.testing.assert_allclose(out.values["shear_stress_lower"] - out.values["shear_stress"], -0.1)
    # an ensemble-spread-scaled score needs the members' spread: no interval for it
    job = {"method": "split-conformal", "targets": {
        "ttsf": {"score": "constant", "q": 0.3, "coef": 0.0, "offset": 0.3},
        "shear_stress": {"score": "normalized", "q": 2.0, "coef": 2.0, "offset": 0.01}}}
    out = Streamer(_task(model, manifest, job)).update_features(np.full((30, 1), 2.5))
    assert list(out.values) == ["shear_stress", "ttsf", "ttsf_lower", "ttsf_upper"]
    np.testing.assert_allclose(out.values["ttsf"] - out.values["ttsf_lower"], 0.3)
    # no interval at all: the targets alone
    out = Streamer(_task(model, manifest)).update_features(np.full((30, 1), 2.5))
    assert list(out.values) == ["shear_stress", "ttsf"]
    assert set(out.as_dict()) == {"time", "shear_stress", "ttsf"}
