"""``LabquakeRegressor``: one Keras object from features (or raw AE) to physical units.

Tiny networks (the ``tiny`` / ``tiny-stream`` presets, untrained: the numbers only need
to vary); every path a task is saved to and read from gives the same predictions."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from labquake_tf.data.features import log_variance
from labquake_tf.data.record import Record
from labquake_tf.errors import DataError
from labquake_tf.files import write_json
from labquake_tf.models import Preprocessor, build_from_preset, heads, saving
from labquake_tf.task import LabquakeRegressor
from labquake_tf.training.artifacts import save_model

RATE, DT = 1000.0, 0.01  # raw AE at 1 kHz: 0.1 s log-variance windows, 0.01 s hops
TARGETS = ["shear_stress", "ttsf"]
INTERVALS = {"method": "split-conformal", "coverage": 0.9, "members": 3, "score": "normalized",
             "targets": {"shear_stress": {"score": "normalized", "coef": 2.0, "offset": 0.01},
                         "ttsf": {"score": "constant", "coef": 0.0, "offset": 0.3}}}


def make_task(preset="tiny", members=1, intervals=None, features=("logvar_ch1",), seed=0):
    keras.utils.set_random_seed(seed)
    network = build_from_preset(preset, n_features=len(features), n_targets=len(TARGETS))
    network = heads.add_heads(network, members, seed=seed)
    n = len(features)
    pre = Preprocessor(list(features), TARGETS, seq_len=16, input_len=network.input_shape[1],
                       dt=DT, feature_scaler={"min": [-3.0] * n, "max": [0.5] * n},
                       target_scaler={"min": [1.0, 0.0], "max": [3.0, 8.0]})
    return LabquakeRegressor(network, pre, intervals,
                             metadata={"data": {"dataset": "unit", "seq_len": 16}})


def manifest_of(task):
    """The data manifest a run before tasks held beside its bare network."""
    pre = task.preprocessor
    return {"dataset": "unit", "feature_names": pre.feature_names, "target_names": TARGETS,
            "seq_len": pre.input_len, "dt": DT,
            "scaler": {"features": pre.feature_scaler.to_dict(),
                       "targets": pre.target_scaler.to_dict()}}


def windows(task, n=6, seed=1):
    shape = (n, task.preprocessor.input_len, len(task.preprocessor.feature_names))
    return np.random.default_rng(seed).uniform(-3, 0.5, shape).astype("float32")


def write_record(path, n_steps=300):
    """A sawtooth stick-slip record in the ``.npz`` layout ``load_record`` reads."""
    t = np.arange(n_steps) * DT
    phase = (t % 1.0)[:, None]
    np.savez(path, time=t, logvar=np.log10(1e-3 + phase).astype("f4"),
             shear_stress=1 + 0.5 * phase[:, 0])
    return path


@pytest.fixture(scope="module")
def ensemble_task():
    return make_task(members=3, intervals=INTERVALS)


def test_predict_is_the_network_through_the_preprocessor_with_its_interval(ensemble_task):
    task = ensemble_task
    x = windows(task)
    out = task.predict(x)
    assert sorted(out) == ["shear_stress", "shear_stress_lower", "shear_stress_upper",
                           "ttsf", "ttsf_lower", "ttsf_upper"]
    mean, members = heads.predict_members(task.network, (x + 3.0) / 3.5)
    expected = mean * [2.0, 8.0] + [1.0, 0.0]
    spread = members.std(axis=0) * [2.0, 8.0]
    for i, name in enumerate(TARGETS):
        assert out[name].shape == (len(x),)
        np.testing.assert_allclose(out[name], expected[:, i], rtol=1e-5, atol=1e-6)
        half = INTERVALS["targets"][name]["coef"] * spread[:, i] + INTERVALS["targets"][name]["offset"]
        np.testing.assert_allclose(out[f"{name}_upper"] - out[name], half, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(out[name] - out[f"{name}_lower"], half, rtol=1e-5, atol=1e-6)
    assert np.ptp(out["ttsf"]) > 0 and np.all(spread[:, 0] > 0)
    # the roles: one backbone, three heads of the same layers
    assert len(task.heads) == 3 and {len(h) for h in task.heads} == {len(task.heads[0])}
    assert all(layer.name.startswith("member1_") for layer in task.heads[1])
    assert task.backbone.output.shape[-1] == 8  # the tiny preset's filters
    assert task.target_names == TARGETS


def test_config_round_trip_and_keras_file(ensemble_task, tmp_path):
    task = ensemble_task
    config = task.get_config()
    assert json.dumps(config)  # plain JSON, as the .keras file stores it
    again = LabquakeRegressor.from_config(config)
    assert isinstance(again, LabquakeRegressor) and again.preprocessor == task.preprocessor
    assert again.intervals == task.intervals and again.metadata == task.metadata
    again.network.set_weights(task.network.get_weights())
    x = windows(task)
    for key, values in task.predict(x).items():
        np.testing.assert_allclose(again.predict(x)[key], values, rtol=1e-6, atol=1e-6)

    task.save(tmp_path / "task.keras")
    assert saving.class_name(tmp_path / "task.keras") == "LabquakeRegressor"
    loaded = keras.saving.load_model(tmp_path / "task.keras")
    assert type(loaded) is LabquakeRegressor and heads.n_members(loaded.network) == 3
    assert loaded.preprocessor == task.preprocessor and loaded.intervals == task.intervals
    expected, got = task.predict(x), loaded.predict(x)
    assert sorted(got) == sorted(expected)
    for key in expected:
        np.testing.assert_allclose(got[key], expected[key], rtol=1e-6, atol=1e-6)


def test_legacy_and_new_run_dirs_and_their_export_predict_alike(ensemble_task, tmp_path):
    task = ensemble_task
    x = windows(task)
    expected = task.predict(x)
    # a run dir as the jobs leave it now: the task in model.keras, the manifest beside it
    new = tmp_path / "new"
    save_model(task, new / "model.keras")
    write_json(new / "manifest.json", manifest_of(task))
    # a run dir from before tasks: the bare network, the manifest (with the interval)
    legacy = tmp_path / "legacy"
    save_model(task.network, legacy / "model.keras")
    write_json(legacy / "manifest.json", {**manifest_of(task), "intervals": INTERVALS})
    assert saving.locate(legacy)[1] == legacy / "manifest.json"
    assert saving.locate(new)[1] is None
    for run in (new, legacy):
        loaded = LabquakeRegressor.from_preset(run)
        assert loaded.intervals == INTERVALS and loaded.preprocessor == task.preprocessor
        assert loaded.metadata["loaded_from"] == str(run)
        got = loaded.predict(x)
        for key in expected:
            np.testing.assert_allclose(got[key], expected[key], rtol=1e-6, atol=1e-6)
    assert LabquakeRegressor.from_preset(legacy).metadata["data"] == manifest_of(task)
    moved = tmp_path / "moved.keras"  # saved after a load, it names where it is loaded next
    save_model(LabquakeRegressor.from_preset(new), moved)
    assert LabquakeRegressor.from_preset(moved).metadata["loaded_from"] == str(moved)

    # the export: its SavedModel serves the task's numbers, and loads back as the task
    version = LabquakeRegressor.from_preset(new).export(tmp_path / "saved" / "m" / "1")
    from_export = LabquakeRegressor.from_preset(version)
    served = tf.saved_model.load(str(version)).signatures["serving_default"](
        ae_features=tf.constant(x))
    for key in expected:
        np.testing.assert_allclose(from_export.predict(x)[key], expected[key],
                                   rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(served[key].numpy(), expected[key], rtol=1e-5, atol=1e-5)


def test_save_to_preset_is_a_tf_serving_base_path_that_loads_back(ensemble_task, tmp_path):
    task = ensemble_task
    card = {"dataset": "unit", "targets": TARGETS, "seed": 0,
            "test_metrics": {"ttsf": {"rmse": np.float32(0.5), "units": "s"}}}
    folder = task.save_to_preset(tmp_path / "my-preset", card=card)
    assert saving.versions(folder) == [1]
    written = json.loads((folder / "metadata.json").read_text())
    assert written["name"] == "my-preset" and written["weights_dtype"] == "float32"
    assert written["test_metrics"]["ttsf"]["rmse"] == 0.5 and written["size_bytes"] > 10_000
    loaded = LabquakeRegressor.from_preset(folder)
    assert loaded.card["dataset"] == "unit"
    x = windows(task)
    expected = task.predict(x)
    for key, values in loaded.predict(x).items():
        np.testing.assert_allclose(values, expected[key], rtol=1e-5, atol=1e-5)
    # float16 weights: half the Keras file, loaded back into float32 variables
    half = task.save_to_preset(tmp_path / "half", weights_dtype="float16")
    assert saving.weights_dtype(half / "1" / "assets" / "model.keras") == "float16"
    assert json.loads((half / "metadata.json").read_text())["weights_dtype"] == "float16"
    got = LabquakeRegressor.from_preset(half).predict(x)
    np.testing.assert_allclose(got["ttsf"], expected["ttsf"], atol=1e-2 * 8)


def test_predict_on_a_record_gives_every_window_with_its_time(ensemble_task, tmp_path):
    task = ensemble_task
    path = write_record(tmp_path / "rec.npz")
    out = task.predict(str(path))
    record = task.read_record(path)
    assert out["time"].shape == out["ttsf"].shape == (len(record) - 15,)
    np.testing.assert_allclose(out["time"], record.time[15:])
    ends = [0, 100, len(record) - 16]
    x = np.stack([record.features[i:i + 16] for i in ends]).astype("float32")
    direct = task.predict(x)
    for key in direct:
        np.testing.assert_allclose(out[key][ends], direct[key], rtol=1e-5, atol=1e-6)
    # a Record as well as a path
    np.testing.assert_allclose(task.predict(record)["ttsf"], out["ttsf"], rtol=1e-6)


def test_a_stream_of_a_record_s_steps_is_task_predict_on_it(tmp_path):
    task = make_task("tiny-stream", intervals={**INTERVALS, "members": 1})
    assert task.preprocessor.input_len == 16 + 2 * (3 - 1) * (1 + 2 + 4) == 44
    record = task.read_record(write_record(tmp_path / "rec.npz", n_steps=400))
    expected = task.predict(record)
    streamer = task.streamer(engine="incremental")
    assert streamer.engine_name == "IncrementalEngine"
    parts = [streamer.update_features(record.features[i:i + n], record.time[i:i + n])
             for i, n in zip(range(0, 400, 37), [37] * 11)]
    got = {k: np.concatenate([p.as_dict()[k] for p in parts]) for k in parts[0].as_dict()}
    # the constant-width interval streams; the spread-scaled one needs members
    assert sorted(got) == ["shear_stress", "time", "ttsf", "ttsf_lower", "ttsf_upper"]
    np.testing.assert_allclose(got["time"], expected["time"], atol=1e-9)
    for key in ("shear_stress", "ttsf", "ttsf_lower", "ttsf_upper"):
        np.testing.assert_allclose(got[key], expected[key], rtol=1e-5, atol=1e-5)
    assert np.ptp(got["shear_stress"]) > 0 and streamer.resets == []


def test_predict_on_raw_ae_with_its_sample_rate(tmp_path):
    task = make_task(features=("logvar_ch2",))
    rng = np.random.default_rng(0)
    n = 3000
    envelope = 50 + 40 * np.sin(np.arange(n) / 300.0)
    ae = np.stack([rng.normal(0, 5, n), rng.normal(0, 1, n) * envelope], 1).astype(np.int16)
    out = task.predict(ae, sample_rate=RATE)
    logvar = log_variance(ae[:, 1:2], RATE)  # channel 2, as the feature name says
    x = np.stack([logvar[i:i + 16] for i in range(len(logvar) - 15)]).astype("float32")
    expected = task.predict(x)
    assert sorted(out) == ["shear_stress", "time", "ttsf"]
    assert out["ttsf"].shape == (len(logvar) - 15,)
    np.testing.assert_allclose(out["time"], 0.09 + np.arange(16, len(logvar) + 1) * DT, atol=1e-9)
    for key in TARGETS:
        np.testing.assert_allclose(out[key], expected[key], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"1 channel\(s\).*channel\(s\) \[2\]"):
        task.predict(ae[:, :1], sample_rate=RATE)


def test_bad_inputs_are_named(tmp_path):
    task = make_task()
    with pytest.raises(ValueError, match=r"feature windows of shape \(4, 5, 1\); the model takes "
                                         r"\(n, 16, 1\) of \['logvar_ch1'\]"):
        task.predict(np.zeros((4, 5, 1)))
    with pytest.raises(ValueError, match=r"shape \(16, 1\)"):
        task.predict(np.zeros((16, 1)))  # one window needs its batch axis
    with pytest.raises(ValueError, match="short.npz: 10 rows of data"):  # the reader's check
        task.predict(write_record(tmp_path / "short.npz", n_steps=10))
    short = Record("short", np.arange(10) * DT, np.zeros((10, 1), "f4"), ["logvar_ch1"], {},
                   np.ones(10, bool))
    with pytest.raises(ValueError, match="10 steps, shorter than one 16-step window"):
        task.predict(short)
    with pytest.raises(ValueError, match=r"feature names differ.*\['logvar_ch1'\].*"
                                         r"record 'short' has \['std_ch1'\]"):
        task.predict(Record("short", np.arange(20) * DT, np.zeros((20, 1), "f4"), ["std_ch1"],
                            {}, np.ones(20, bool)))
    with pytest.raises(FileNotFoundError, match="nope.npz: neither a file nor a dataset name"):
        task.predict(str(tmp_path / "nope.npz"))
    with pytest.raises(ValueError, match=r"channels \[2\] not available"):
        make_task(features=("logvar_ch2",)).predict(write_record(tmp_path / "one.npz"))
    pre = task.preprocessor
    with pytest.raises(ValueError, match="the network reads 16 steps, its preprocessor 20"):
        LabquakeRegressor(task.network, Preprocessor.from_config(
            {**pre.get_config(), "input_len": 20}))
    with pytest.raises(NotImplementedError, match="labquake_tf.finetune"):
        task.fit(np.zeros((1, 16, 1)), np.zeros((1, 2)))
    with pytest.raises(DataError, match="records no dataset it was trained on"):
        LabquakeRegressor(task.network, pre).evaluate()
    with pytest.raises(FileNotFoundError, match="not a shipped preset"):
        LabquakeRegressor.from_preset(tmp_path / "missing")


def test_summary_names_the_roles(ensemble_task, capsys):
    ensemble_task.summary()
    text = capsys.readouterr().out
    assert "LabquakeRegressor" in text and "shear_stress, ttsf" in text
    assert "3 decoder block(s) of 8 filters, kernel 3" in text and "heads: 3" in text
    assert "interval: 90% split-conformal, score normalized" in text
    assert "logvar_ch1 [-3, 0.5]" in text


def test_evaluate_and_plot_on_another_record(ensemble_task, sim_record, tmp_path):
    task = ensemble_task
    result, p = task.evaluate(str(sim_record), split="test", return_predictions=True)
    assert result["dataset"] == str(sim_record) and result["split"] == "test"
    for name in TARGETS:
        m = result["targets"][name]
        assert m["n_labelled"] > 100 and np.isfinite(m["rmse"]) and m["mae"] <= m["rmse"]
        # the interval was calibrated on the task's own data only: not scored here
        assert "coverage" not in m
    assert p["pred"].shape == (result["n_windows"], 2) and "lower" not in p
    # the same windows through task.predict: the same physical numbers
    record = task.read_record(sim_record)
    ends = np.searchsorted(record.time, p["time"][:5])
    x = np.stack([record.features[e - 15:e + 1] for e in ends]).astype("float32")
    np.testing.assert_allclose(task.predict(x)["ttsf"], p["pred"][:5, 1], rtol=1e-5, atol=1e-5)
    other = task.evaluate(str(sim_record), split="test", ratios=(0.6, 0.2, 0.2))
    assert other["n_windows"] < result["n_windows"]  # 20 % of the events, not 40 %
    paths = task.plot(str(sim_record), split="val", path=tmp_path / "plots")
    assert [p.name for p in paths] == ["val_shear_stress.png", "val_ttsf.png"]
    assert all(p.stat().st_size > 5000 for p in paths)


def test_shipped_presets_are_found_by_name_and_listed(ensemble_task, tmp_path, monkeypatch,
                                                      capsys):
    import labquake_tf as lq
    from labquake_tf.cli import main

    monkeypatch.setattr(saving, "SHIPPED_DIR", tmp_path / "presets")
    assert main(["presets"]) == 0
    assert "no presets installed" in capsys.readouterr().out
    card = {"dataset": "unit", "targets": ["ttsf"],
            "test_metrics": {"ttsf": {"rmse": 0.5, "units": "s", "coverage": 0.9}}}
    ensemble_task.save_to_preset(tmp_path / "presets" / "unit-ttsf", card=card)
    assert lq.presets() == ["unit-ttsf"] and "unit-ttsf" in str(lq.presets())
    loaded = LabquakeRegressor.from_preset("unit-ttsf")  # a name, not a path
    x = windows(ensemble_task)
    np.testing.assert_allclose(loaded.predict(x)["ttsf"], ensemble_task.predict(x)["ttsf"],
                               rtol=1e-5, atol=1e-5)
    assert main(["presets"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("unit-ttsf") and "ttsf RMSE 0.5 s, 90% in its interval" in line
    assert main(["presets", "--card", "unit-ttsf"]) == 0
    assert json.loads(capsys.readouterr().out)["name"] == "unit-ttsf"
    assert main(["presets", "--card", "unit-stress"]) == 1
    assert "not a shipped preset (shipped: unit-ttsf" in capsys.readouterr().err
