import numpy as np
import pytest
from PIL import Image

from labquake_tf.evaluation.figures import plot_history, plot_prediction_panel
from labquake_tf.evaluation.metrics import regression_metrics


def test_regression_metrics_by_hand():
    y = np.array([1.0, 2.0, 3.0, 4.0])
    p = np.array([1.5, 2.0, 2.0, 4.0])
    m = regression_metrics(y, p)
    assert m["rmse"] == pytest.approx(np.sqrt((0.25 + 1.0) / 4))
    assert m["mae"] == pytest.approx(1.5 / 4)
    assert m["r2"] == pytest.approx(1 - 1.25 / 5.0)
    assert regression_metrics(y, y) == {"rmse": 0.0, "mae": 0.0, "r2": 1.0}


def test_regression_metrics_refuses_mismatched_or_invalid_input():
    with pytest.raises(ValueError, match="shape"):
        regression_metrics(np.zeros(3), np.zeros((3, 1)))
    with pytest.raises(ValueError, match="NaN"):
        regression_metrics(np.array([1.0, np.nan]), np.zeros(2))
    with pytest.raises(ValueError, match="no values"):
        regression_metrics([], [])


def _capture_figures(monkeypatch):
    """Record each figure as it is saved: the test reads the plotted data, not pixels."""
    from labquake_tf.evaluation import figures

    saved, save = [], figures._save
    monkeypatch.setattr(figures, "_save", lambda fig, path: (
        saved.append([[(ln.get_label(), ln.get_xdata(), ln.get_ydata()) for ln in ax.lines]
                      + [ax.get_yscale()] + [(t.get_position(), t.get_text()) for t in ax.texts]
                      for ax in fig.axes]), save(fig, path)))
    return saved


def test_plots_write_pngs(tmp_path, monkeypatch):
    saved = _capture_figures(monkeypatch)
    plot_history({"epoch": [0, 1, 2], "loss": [1.0, 0.5, 0.2], "val_loss": [1.1, 0.6, 0.4]},
                 tmp_path / "loss.png")
    t = np.linspace(0, 10, 200)
    plot_prediction_panel(tmp_path / "pred.png", t, np.sin(t), np.sin(t) + 0.1, "shear_stress", "MPa")
    for name in ("loss.png", "pred.png"):
        with Image.open(tmp_path / name) as im:
            assert im.format == "PNG" and im.size[0] > 300
    # The loss figure: both curves, over epochs 1..3, on a log scale.
    (loss_ax,) = saved[0]
    curves = {label: (list(x), list(y)) for label, x, y in loss_ax[:-1]}
    assert curves == {"loss": ([1, 2, 3], [1.0, 0.5, 0.2]), "val_loss": ([1, 2, 3], [1.1, 0.6, 0.4])}
    assert loss_ax[-1] == "log"
    # The prediction panel: truth and prediction over time, then predicted vs true.
    over_time, scatter = saved[1]
    (_, tx, truth), (_, px, pred) = over_time[:2]
    np.testing.assert_array_equal(tx, t)
    np.testing.assert_allclose(truth, np.sin(t))
    np.testing.assert_allclose(pred, np.sin(t) + 0.1)
    np.testing.assert_allclose(scatter[0][1], np.sin(t))
    np.testing.assert_allclose(scatter[0][2], np.sin(t) + 0.1)
    with pytest.raises(ValueError, match="loss"):
        plot_history({"epoch": []}, tmp_path / "empty.png")


def test_p4581_last_cycle_is_scored_for_shear_stress_and_masked_for_ttsf(dds_dir, tmp_path):
    """The 86 test steps after p4581's last onset are a real loading phase: a shear-stress
    label, not a time-to-failure one (nothing to count down to)."""
    from labquake_tf.data import pipeline, prepare
    from labquake_tf.evaluation.metrics import evaluate_model, predict
    from labquake_tf.models import build_tcn
    from labquake_tf.task import LabquakeRegressor

    data = tmp_path / "p4581"
    manifest = prepare.prepare("p4581", data, seq_len=16, targets=["shear_stress", "ttsf"],
                               split="0.5,0.1,0.4")
    test = manifest["splits"]["test"]
    assert test["n_steps"] == 1255
    assert test["n_labelled"] == {"shear_stress": 1255, "ttsf": 1169}
    last_onset = manifest["events"][-1][0] - test["step_range"][0]
    assert test["n_steps"] - 1 - last_onset == 86

    # Every labelled step is a window end (the first ones read the val part's AE as input).
    arrays = pipeline.split_arrays(data, "test")
    stress = arrays["targets"]["shear_stress"][last_onset + 1:]
    assert len(stress) == 86 and np.ptp(stress) > 0.3  # the last loading phase (MPa)
    for names, n in ((["shear_stress"], 1255), (["ttsf"], 1169), (None, 1169)):
        assert sum(len(y) for _, y in pipeline.make_dataset(data, "test", targets=names)) == n

    model = build_tcn(16, n_targets=2, filters=4, kernel_size=3, blocks=3, dropout=0.0)
    task = LabquakeRegressor.from_manifest(model, manifest)
    result, p = evaluate_model(task, data, "test")
    assert result["targets"]["shear_stress"]["n_labelled"] == 1255
    assert result["targets"]["ttsf"]["n_labelled"] == 1169
    assert p["mask"].shape == (1255, 2) and np.isnan(p["true"][~p["mask"]]).all()
    assert np.isfinite(p["true"][p["mask"]]).all()
    p2 = predict(task, data, "test")
    assert p2["time"][-1] == arrays["time"][-1]  # the last step of the record is scored
    # the task's own path from raw windows gives the same physical numbers
    np.testing.assert_allclose(task.predict(arrays["features"][None, -16:])["shear_stress"], p2["pred"][-1:, 0],
                               rtol=1e-6, atol=1e-6)


def test_near_failure_marks_two_seconds_before_onset_through_the_end():
    from labquake_tf.evaluation.metrics import near_failure
    time = np.arange(0.0, 20.0, 0.5)
    near = near_failure(time, [[5.0, 6.0], [15.0, 15.5]])
    expected = ((time >= 3.0) & (time <= 6.0)) | ((time >= 13.0) & (time <= 15.5))
    np.testing.assert_array_equal(near, expected)
    assert not near_failure(time, np.zeros((0, 2))).any()


def test_coverage_by_phase_scores_each_phase_apart():
    from labquake_tf.evaluation.metrics import coverage_by_phase
    y = np.zeros(10)
    lower, upper = np.full(10, -1.0), np.full(10, 1.0)
    y[:2] = 5.0  # two misses, both near a failure
    near = np.zeros(10, bool)
    near[:4] = True
    out = coverage_by_phase(y, lower, upper, near)
    assert out["near_failure"] == {"coverage": 0.5, "width": 2.0, "n": 4}
    assert out["loading"] == {"coverage": 1.0, "width": 2.0, "n": 6}
    assert "near_failure" not in coverage_by_phase(y, lower, upper, np.zeros(10, bool))


def test_evaluating_again_and_again_traces_no_new_function(caplog):
    """Scoring runs predict many times, on several models (a run, its members, a fine-tune's
    trunk): none may make TensorFlow warn of tf.function retracing (it did on every
    evaluation when each call built its own members model and Keras predict function)."""
    import logging

    from labquake_tf.evaluation.metrics import predict_windows
    from labquake_tf.models import Preprocessor, build_tcn, heads

    pre = Preprocessor(["logvar_ch1"], ["shear_stress"], seq_len=8).with_scalers(
        {"min": [0.0], "max": [1.0]}, {"min": [0.0], "max": [2.0]})
    intervals = {"coverage": 0.9, "targets": {"shear_stress": {"coef": 0.0, "offset": 0.1}}}
    rng = np.random.default_rng(0)
    with caplog.at_level(logging.WARNING, logger="tensorflow"):
        for seed in range(3):  # new models, as each fine-tune and its calibration twin make
            model = heads.add_heads(build_tcn(8, filters=4, kernel_size=3, blocks=2), 3, seed)
            for n in (7, 600, 33, 513, 1):  # last batches of every size
                x = rng.normal(size=(n, 8, 1)).astype("float32")
                out = predict_windows(model, pre, x, intervals)
                plain = predict_windows(model, pre, x)
                assert out["pred"].shape == (n, 1) and out["lower"].shape == (n, 1)
                np.testing.assert_allclose(out["pred"], plain["pred"], rtol=1e-5, atol=1e-6)
                trunk = heads.predict_batches(keras_trunk(model), x, 64)
                assert trunk.shape[0] == n
    assert not [r for r in caplog.records if "retracing" in r.getMessage()]


def keras_trunk(model):
    import keras

    return keras.Model(model.inputs[0], model.get_layer("decoder_block_1").output)
