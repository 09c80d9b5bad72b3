"""The main job end to end, once, on the synthetic dataset with the tiny preset and a
few steps (about a minute on 2 cores, most of it data preparation and tracing)."""

import json

import numpy as np
import pytest

from labquake_tf import cli
from labquake_tf.evaluation.metrics import predict, regression_metrics
from labquake_tf.models import PRESETS, build_tcn
from labquake_tf.models.layers import conv_impl_plan
from labquake_tf.task import LabquakeRegressor


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrain")
    argv = ["pretrain", "--preset", "tiny", "--epochs", "2", "--steps-per-epoch", "3",
            "--batch-size", "32", "--out", str(root / "run"), "--export-dir", str(root / "saved")]
    assert cli.main(argv) == 0
    return root


def test_run_dir_holds_the_contracted_files(pretrained):
    run = pretrained / "run"
    for name in ("model.keras", "manifest.json", "config.json", "history.csv", "metrics.json",
                 "plots/loss.png", "plots/test_shear_stress.png", "tensorboard", "data/manifest.json"):
        assert (run / name).exists(), name
    assert not list(pretrained.glob("*.partial")) and not (run / "backup").exists()
    config = json.loads((run / "config.json").read_text())
    assert config["preset"] == "tiny" and config["train"]["epochs"] == 2
    task = LabquakeRegressor.from_preset(run)
    manifest = json.loads((run / "manifest.json").read_text())
    # model.keras is the whole task; manifest.json beside it is its data's provenance
    assert task.metadata["data"] == manifest and task.metadata["preset"] == "tiny"
    assert task.metadata["training"]["job"] == "pretrain"
    assert manifest["target_names"] == task.target_names == ["shear_stress"] and manifest["dataset"]
    assert task.preprocessor.fitted and task.intervals is None
    assert build_tcn(**config["model"]).count_params() == task.network.count_params()


def test_metrics_are_the_test_split_scores_in_physical_units(pretrained):
    run = pretrained / "run"
    scores = json.loads((run / "metrics.json").read_text())
    metrics = scores["targets"]["shear_stress"]
    p = predict(LabquakeRegressor.from_preset(run), run / "data", "test")
    y_true, y_pred = p["true"], p["pred"]
    assert y_true.shape == y_pred.shape == (len(p["time"]), 1)
    assert scores["split"] == "test" and scores["n_windows"] == len(p["time"])
    assert metrics["units"] == "MPa"
    expected = regression_metrics(y_true[:, 0], y_pred[:, 0])
    assert metrics["rmse"] == pytest.approx(expected["rmse"], rel=1e-5)
    assert metrics["r2"] == pytest.approx(expected["r2"], rel=1e-5, abs=1e-8)
    # physical units: the stress range is ~MPa, not the scaled [0, 1]
    assert np.ptp(y_true) > 0


def test_export_is_a_savedmodel_that_loads_back(pretrained):
    version = pretrained / "saved" / "labquake-pretrain" / "1"
    assert (version / "saved_model.pb").exists()
    exported = LabquakeRegressor.from_preset(version)
    task = LabquakeRegressor.from_preset(pretrained / "run")
    x = np.random.default_rng(0).uniform(size=(2, *task.input_shape[1:])).astype("float32")
    np.testing.assert_allclose(exported.network(x).numpy(), task.network(x).numpy(),
                               rtol=1e-5, atol=1e-6)
    assert exported.preprocessor == task.preprocessor
    assert exported.metadata["data"]["target_names"] == ["shear_stress"]


def test_pretrain_reuses_a_prepared_data_dir_and_records_its_choices(pretrained, tmp_path):
    data = pretrained / "run" / "data"
    argv = ["pretrain", "--data", str(data), "--preset", "tiny", "--epochs", "1",
            "--max-steps", "2", "--batch-size", "32", "--jit-compile", "off", "--progress", "0",
            "--out", str(tmp_path / "again"), "--export-dir", str(tmp_path / "saved")]
    assert cli.main(argv) == 0
    run = tmp_path / "again"
    assert not (run / "data").exists()  # nothing prepared again
    config = json.loads((run / "config.json").read_text())
    assert config["data_dir"] == str(data.resolve())
    assert config["train"]["jit_compile"] is False and config["train"]["steps_per_epoch"] == 2
    assert config["execution"]["device"] == "CPU"
    assert config["execution"]["conv_impl"] == conv_impl_plan(PRESETS["tiny"]["blocks"], "CPU",
                                                              False)
    assert json.loads((run / "manifest.json").read_text())["scaler"] == \
        json.loads((data / "manifest.json").read_text())["scaler"]
    assert json.loads((run / "metrics.json").read_text())["targets"]["shear_stress"]["rmse"] > 0


def test_pretrain_on_prepared_data_without_its_targets_is_refused(pretrained, tmp_path, capsys):
    from labquake_tf.errors import UsageError

    with pytest.raises(ValueError, match="prepared for targets"):
        cli.run_command(["pretrain", "--data", str(pretrained / "run" / "data"), "--preset",
                         "tiny", "--targets", "ttsf", "--out", str(tmp_path / "x")])
    assert not (tmp_path / "x").exists()
    with pytest.raises(UsageError, match="invalid choice: 'float8'.*mixed_float16"):
        cli.run_command(["pretrain", "--precision", "float8"])
