import json

import numpy as np
import pytest

from labquake_tf.jobs import finetune as job
from labquake_tf.evaluation import calibration
from labquake_tf.models import Preprocessor, heads
from labquake_tf.task import LabquakeRegressor

from tests.test_training_finetune import _head_params, pretrained, source_run  # noqa: F401


def _hidden(folder):
    """Dot-named entries: what a half-written run dir (files.atomic_dir) would leave."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))

def test_finetune_job_trains_a_target_the_source_never_saw(pretrained, dds_dir, tmp_path):
    from labquake_tf.cli import main

    src = source_run(pretrained, tmp_path / "src", dataset="p5198",
                     target_names=["shear_stress"], feature_names=["logvar_ch1"])
    out = tmp_path / "ft"
    rc = main(["finetune", "--from", str(src), "--dataset", "p4581", "--target", "ttsf",
               "--blocks", "2", "--seq-len", "12", "--epochs", "2", "--out", str(out)])
    assert rc == 0
    for name in ("model.keras", "manifest.json", "config.json", "metrics.json", "history.csv",
                 "plots/loss.png", "plots/test_ttsf.png"):
        assert (out / name).is_file(), name
    assert _hidden(out.parent) == []  # no temporary folder left beside the run
    config = json.loads((out / "config.json").read_text())["finetune"]
    assert config["target"] == "ttsf" and config["blocks"] == 2 and config["cached"]
    # both fixed: no search; a frozen decoder gets the default ensemble
    assert config["selection"] is None and config["ensemble"] == 5
    assert config["trainable_fraction"] == pytest.approx(
        5 * _head_params(8, 12) / config["total_params"])  # five heads train
    # Two frozen 8-wide blocks, trainable heads 64 wide: no XLA on CPU, plain convs.
    assert json.loads((out / "config.json").read_text())["execution"] == {
        "device": "CPU", "jit_compile": False, "conv_impl": {"1": "conv", "2": "conv"}}
    assert json.loads((out / "manifest.json").read_text())["target_names"] == ["ttsf"]
    metrics = json.loads((out / "metrics.json").read_text())
    test = metrics["test"]["targets"]["ttsf"]
    # model.keras is the whole task: its metadata holds the run's summary and scores
    task = LabquakeRegressor.from_preset(out)
    assert task.target_names == ["ttsf"] and heads.n_members(task.network) == 5
    assert task.metadata["training"]["metrics"]["test"] == metrics["test"]
    assert task.metadata["training"]["from"] == str(src)
    assert task.metadata["training"]["source_dataset"] == "p5198"
    assert task.metadata["data"] == json.loads((out / "manifest.json").read_text())
    # Learnt, not just run: it beats predicting the mean, R2 > 0 with a margin (0.28 with
    # per-target label masks, 0.63 before; an untrained head scores below 0), in seconds.
    assert test["r2"] > 0.1 and test["rmse"] == pytest.approx(
        test["rmse_scaled"] * _ttsf_span(out), rel=1e-5)


def _ttsf_span(run):
    scaler = json.loads((run / "manifest.json").read_text())["scaler"]["targets"]
    return scaler["max"][0] - scaler["min"][0]


def test_finetune_matches_features_by_name(pretrained, sim_record, tmp_path):
    from labquake_tf.cli import run_command

    # one feature column, as the record's, but another feature: a count check would let it through
    src = source_run(pretrained, tmp_path / "src", dataset="x",
                     target_names=["shear_stress"], feature_names=["ae_rms"])
    out = tmp_path / "ft"
    with pytest.raises(ValueError, match=r"feature names differ.*\['ae_rms'\].*\['logvar_ch1'\]"):
        run_command(["finetune", "--from", str(src), "--dataset", str(sim_record),
                     "--seq-len", "12", "--epochs", "1", "--out", str(out)])
    assert not out.exists() and _hidden(out.parent) == []
    # a task in memory is named by its name in the message, not by its repr
    task = LabquakeRegressor(pretrained, Preprocessor(["ae_rms"], ["shear_stress"], seq_len=16))
    with pytest.raises(ValueError, match=r"feature names differ: task 'tcn' takes \['ae_rms'\]"):
        job.finetune(task, str(sim_record), out, seq_len=12)
    assert not out.exists() and _hidden(out.parent) == []


def test_a_dataset_too_short_for_the_window_is_named_and_nothing_is_written(pretrained,
                                                                             sim_record, tmp_path):
    from labquake_tf.cli import run_command
    from labquake_tf.training.artifacts import save_model

    src = tmp_path / "src"
    src.mkdir()
    save_model(pretrained, src / "model.keras")
    (src / "manifest.json").write_text(json.dumps({"dataset": "p5198", "target_names": [
        "shear_stress"], "feature_names": ["logvar_ch1"]}))
    out = tmp_path / "ft"
    with pytest.raises(ValueError, match=r"sim-dds.h5: split 'val' has \d+ steps, shorter than "
                                         r"one window of seq_len=400"):
        run_command(["finetune", "--from", str(src), "--dataset", str(sim_record), "--seq-len",
                     "400", "--input-norm", "refit", "--out", str(out)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


@pytest.mark.parametrize("flag", [["--ensemble", "0"], ["--coverage", "1.0"],
                                  ["--coverage", "0"], ["--coverage", "90"]])
def test_finetune_cli_refuses_bad_ensemble_or_coverage(flag, tmp_path, capsys):
    from labquake_tf.cli import main

    out = tmp_path / "ft"
    rc = main(["finetune", "--from", str(tmp_path), "--dataset", "p4581", "--out", str(out), *flag])
    assert rc == 2  # a usage error, before anything runs
    assert flag[0] in capsys.readouterr().err
    assert not out.exists() and _hidden(out.parent) == []


def test_finetune_refuses_bad_options_before_writing(tmp_path):
    for kwargs, match in (({"ensemble": 0}, "--ensemble"), ({"coverage": 1.2}, "coverage"),
                          ({"ensemble": 3, "decoder": "trainable"}, "frozen decoder"),
                          ({"interval_score": "wide"}, "interval_score"),
                          ({"calibration": "test"}, "calibration"),
                          ({"target": "slip"}, "target must be one of"),
                          ({"train_fraction": 0}, "train_fraction"),
                          ({"train_fraction": 1.5}, "train_fraction")):
        with pytest.raises(ValueError, match=match):
            job.finetune(tmp_path / "nowhere", "p4581", tmp_path / "ft", **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_finetune_job_calibrates_an_interval_and_the_export_serves_it(pretrained, sim_record,
                                                                      tmp_path):
    import tensorflow as tf

    from labquake_tf.cli import main
    from labquake_tf.data.pipeline import split_arrays
    from labquake_tf.data.scaling import MinMaxScaler
    from labquake_tf.evaluation import intervals

    src = source_run(pretrained, tmp_path / "src", dataset="p5198",
                     feature_names=["logvar_ch1"])
    run = tmp_path / "ft"
    assert main(["finetune", "--from", str(src), "--dataset", str(sim_record), "--blocks", "2",
                 "--seq-len", "12", "--epochs", "2", "--ensemble", "3", "--coverage", "0.8",
                 "--out", str(run)]) == 0
    manifest = json.loads((run / "manifest.json").read_text())
    task = LabquakeRegressor.from_preset(run)
    assert "intervals" not in manifest  # the interval is the task's, not the data's
    iv = task.intervals
    assert iv["members"] == 3 and iv["coverage"] == 0.8
    assert iv["calibration"]["split"].startswith("train, later half")  # the default: forward
    # the twin behind the interval and the heads, both on the validation windows
    gap = iv["calibration"]["val_rmse"]
    assert gap["twin"]["shear_stress"] > 0 and gap["heads"]["shear_stress"] > 0
    assert set(iv["score_selection"]) <= set(intervals.SCORES)
    assert iv["targets"]["shear_stress"]["offset"] > 0
    metrics = json.loads((run / "metrics.json").read_text())
    for split in ("val", "test"):
        scores = metrics[split]["targets"]["shear_stress"]
        assert 0 <= scores["coverage"] <= 1 and scores["width"] > 0
        assert scores["interval_target"] == 0.8
    assert gap["heads"]["shear_stress"] == pytest.approx(
        metrics["val"]["targets"]["shear_stress"]["rmse"], rel=1e-4)
    assert json.loads((run / "config.json").read_text())["finetune"]["ensemble"] == 3
    assert not (run / "forward").exists()

    assert main(["export", str(run), "--name", "ens", "--base-dir", str(tmp_path / "sm")]) == 0
    loaded = tf.saved_model.load(str(tmp_path / "sm" / "ens" / "1"))
    arrays = split_arrays(run / "data", "test")
    raw = np.lib.stride_tricks.sliding_window_view(arrays["features"][:60], 12, axis=0)
    raw = np.ascontiguousarray(raw.transpose(0, 2, 1)).astype("float32")
    out = loaded.signatures["serving_default"](ae_features=tf.constant(raw))
    assert sorted(out) == ["shear_stress", "shear_stress_lower", "shear_stress_upper"]
    mid, lo, hi = (out[k].numpy() for k in sorted(out))
    assert np.all(lo <= mid) and np.all(mid <= hi) and np.all(hi - lo > 0)
    # the same numbers as evaluation's interval from the run's network and manifest
    f_scaler = MinMaxScaler.from_dict(manifest["scaler"]["features"])
    t_scaler = MinMaxScaler.from_dict(manifest["scaler"]["targets"])
    mean, members = heads.predict_members(task.network, f_scaler.transform(raw))
    assert members.shape == (3, len(raw), 1)
    lo_ref, hi_ref = intervals.bounds(t_scaler.inverse_transform(mean),
                                      members.std(axis=0) * t_scaler.scale,
                                      [iv["targets"]["shear_stress"]])
    np.testing.assert_allclose(mid, t_scaler.inverse_transform(mean)[:, 0], atol=1e-5)
    np.testing.assert_allclose(lo, lo_ref[:, 0], atol=1e-5)
    np.testing.assert_allclose(hi, hi_ref[:, 0], atol=1e-5)
    # and the task's own predict, in Python
    local = task.predict(raw)
    for key, served in zip(sorted(out), (mid, lo, hi)):
        np.testing.assert_allclose(local[key], served, atol=1e-5)


def test_finetune_trains_longer_than_pretraining_by_default_and_the_cli_agrees():
    import argparse

    from labquake_tf.training import TrainConfig, config as config_lib

    parser = argparse.ArgumentParser()
    job.add_arguments(parser)
    args = parser.parse_args(["--from", "x", "--dataset", "p4581"])
    assert config_lib.from_args(args) == job.finetune_config(verbose=2)
    assert (job.finetune_config().epochs, job.finetune_config().patience) == (300, 40)
    assert TrainConfig().epochs == 100  # pretraining keeps the reference's budget
    assert job.finetune_config(seed=3, epochs=5).epochs == 5


def test_train_fraction_keeps_the_events_nearest_validation(sim_record, tmp_path):
    from labquake_tf.data import prepare
    from labquake_tf.data import train_fraction as tf_
    from labquake_tf.data.pipeline import split_arrays

    data = tmp_path / "data"
    prepare.prepare(sim_record, data, seq_len=8, targets=["shear_stress"],
                    split=(0.5, 0.1, 0.4))
    events = split_arrays(data, "train")["events"]
    n = len(events)
    assert n >= 6
    kept = tf_.kept_events(data, 0.25)
    assert len(kept) == int(np.ceil(0.25 * n)) and np.array_equal(kept, events[n - len(kept):])
    assert np.array_equal(tf_.kept_events(data, 1.0), events)
    assert len(tf_.kept_events(data, 1e-6)) == 1  # never none
    cut = tf_.first_kept_step(data, 0.25)
    assert cut == int(events[n - len(kept) - 1, 1]) + 1 and tf_.first_kept_step(data, 1) == 0
    (x, y), ends = tf_.training_windows(data, 8, 0.25)
    (x_all, y_all), ends_all = tf_.training_windows(data, 8)
    assert ends.min() >= cut and np.array_equal(ends, ends_all[ends_all >= cut])
    np.testing.assert_array_equal(x, x_all[ends_all >= cut])
    assert x.shape == (len(y), 8, 1) and 0 < len(y) < len(y_all)
    # forward calibration splits the kept events only
    (_, y_early), (_, y_late) = calibration.forward_windows(data, 8, 0.5)
    assert len(y_early) + len(y_late) == len(tf_.training_windows(data, 8, 0.5)[1])
    with pytest.raises(ValueError, match="train_fraction"):
        tf_.kept_events(data, -0.1)


def test_finetune_on_a_fraction_leaves_val_and_test_as_they_were(pretrained, sim_record,
                                                                  tmp_path):
    from labquake_tf.training import TrainConfig

    config = TrainConfig(epochs=2, verbose=0)
    src = source_run(pretrained, tmp_path / "src", dataset="x")
    runs = {}
    for fraction in (1.0, 0.05):
        task = job.finetune(str(src), str(sim_record), tmp_path / f"ft{fraction}", blocks=1,
                            seq_len=8, config=config, ensemble=2, train_fraction=fraction)
        runs[fraction] = task.metadata["training"]
    assert runs[0.05]["train_fraction"] == 0.05 and runs[1.0]["train_fraction"] == 1.0
    # too few events kept for a forward split: calibrated on validation instead
    assert runs[0.05]["calibration"] == "val" and runs[1.0]["calibration"] == "forward"
    for split in ("val", "test"):
        assert (runs[0.05]["metrics"][split]["targets"]["shear_stress"]["n_labelled"]
                == runs[1.0]["metrics"][split]["targets"]["shear_stress"]["n_labelled"])
