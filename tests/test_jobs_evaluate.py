import csv
import json
import shutil

import numpy as np
import pytest

from labquake_tf.cli import main, run_command
from labquake_tf.data import prepare
from labquake_tf.data.pipeline import split_arrays
from labquake_tf.evaluation.metrics import evaluate_model
from labquake_tf.jobs.evaluate import evaluate
from labquake_tf.models import build_tcn
from labquake_tf.serving.export import export_model
from labquake_tf.task import LabquakeRegressor
from labquake_tf.training.artifacts import save_model

TARGETS = ["shear_stress", "ttsf", "ttef"]


def make_run(run, dataset, targets=TARGETS, seq_len=16, split="0.7,0.1,0.2", legacy=False,
             **options):
    """A run dir as the training jobs leave it: the task (``legacy``: the bare network,
    as runs before tasks held it), the manifest and RUN/data."""
    manifest = prepare.prepare(dataset, run / "data", seq_len=seq_len, targets=targets,
                               split=split, **options)
    (run / "manifest.json").write_text(json.dumps(manifest))
    model = build_tcn(seq_len, n_targets=len(targets), filters=4, kernel_size=3, blocks=3,
                      dropout=0.0)
    task = LabquakeRegressor.from_manifest(model, manifest)
    save_model(model if legacy else task, run / "model.keras")
    return task, manifest


def rewrite_run(run, **changes):
    """The run's task again, its data manifest changed (``intervals`` become the task's)."""
    task = LabquakeRegressor.from_preset(run)
    manifest = {**task.metadata["data"], **changes}
    if "feature_names" in changes:  # a manifest names its scaler's columns as its features
        scaler = manifest["scaler"]
        manifest["scaler"] = {**scaler, "features": {**scaler["features"],
                                                    "names": changes["feature_names"]}}
    save_model(LabquakeRegressor.from_manifest(task.network, manifest), run / "model.keras")
    (run / "manifest.json").write_text(json.dumps(
        {k: v for k, v in manifest.items() if k != "intervals"}))
    return manifest


@pytest.fixture(scope="module")
def run_dir(sim_record, tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    make_run(run, str(sim_record))
    (run / "history.csv").write_text("epoch,loss,val_loss\n0,0.5,0.6\n1,0.2,0.3\n")
    return run


def test_evaluate_writes_metrics_predictions_and_plots(run_dir, sim_record, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["evaluate", str(run_dir), "--split", "test", "--out", str(out)]) == 0
    assert "shear_stress: RMSE" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["dataset"] == str(sim_record)
    assert metrics["split_ratios"] == pytest.approx([0.7, 0.1, 0.2])
    assert metrics["data"] == str(run_dir / "data")  # the run's own shards, not re-prepared
    assert set(metrics["targets"]) == set(TARGETS) and set(metrics["events"]) == {"ttsf", "ttef"}
    assert metrics["targets"]["shear_stress"]["units"].startswith("MPa")

    with open(out / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == metrics["n_windows"] > 100
    # The windows scored are the test split's: each ends at a step labelled for some target,
    # inside the split's time range, and every such step is scored, once.
    test = split_arrays(run_dir / "data", "test")
    info = json.loads((run_dir / "data" / "manifest.json").read_text())["splits"]["test"]
    labelled = np.any([test["label_mask"][name] for name in TARGETS], axis=0)
    times = np.array([float(r["time"]) for r in rows])
    # (predictions.csv holds 6 decimals)
    assert info["t_start"] - 1e-6 <= times.min() and times.max() <= info["t_end"] + 1e-6
    np.testing.assert_allclose(times, test["time"][labelled], atol=1e-6)
    for name in TARGETS:
        labelled = [r for r in rows if r[f"{name}_true"] != ""]
        true = np.array([float(r[f"{name}_true"]) for r in labelled])
        pred = np.array([float(r[f"{name}_pred"]) for r in labelled])
        m = metrics["targets"][name]
        # every labelled test step of that target is scored, by its own mask
        assert m["n_labelled"] == len(labelled) == metrics["n_labelled_split"][name]
        assert m["rmse"] == pytest.approx(np.sqrt(np.mean((pred - true) ** 2)), rel=1e-4)
        assert m["mae"] <= m["rmse"]
        assert m["r2"] == pytest.approx(1 - np.sum((pred - true) ** 2)
                                        / np.sum((true - true.mean()) ** 2), rel=1e-4, abs=1e-4)
    assert metrics["targets"]["shear_stress"]["n_labelled"] > metrics["targets"]["ttsf"]["n_labelled"]
    ttsf = metrics["events"]["ttsf"]
    assert 2 <= ttsf["n_events"] <= 10
    assert sum(e["n_steps"] for e in ttsf["events"]) == metrics["targets"]["ttsf"]["n_labelled"]
    for png in ("test_shear_stress.png", "test_ttsf.png", "test_ttef.png", "loss.png"):
        assert (out / "plots" / png).stat().st_size > 5000, png


@pytest.mark.parametrize("kind", ["file", "simulated-seed-7"])
def test_a_run_is_scored_on_its_own_split_and_so_is_its_export(kind, request, tmp_path):
    """Named by a path, or a simulated record (named synthetic-dds whatever its seed):
    evaluate must never re-prepare the registry's record of that name."""
    if kind == "file":
        record = tmp_path / "mine.csv"
        shutil.copy(request.getfixturevalue("dds_dir") / "p4581.csv", record)
        split = "0.7,0.1,0.2"  # not the 5:1:4 an unknown dataset would get
    else:
        record = tmp_path / "sim7.h5"
        assert main(["simulate", "--preset", "dds", "--duration", "90", "--seed", "7",
                     "--out", str(record)]) == 0
        split = "0.6,0.2,0.2"
    run = tmp_path / "run"
    task, manifest = make_run(run, str(record), targets=["shear_stress"], split=split)
    own, _ = evaluate_model(task, run / "data", "test")
    from_run, _ = evaluate(run, out=tmp_path / "e1")
    export = export_model(task, "m", base_dir=tmp_path / "saved")
    from_export, _ = evaluate(export, out=tmp_path / "e2")
    # a run dir from before tasks (bare network, manifest.json beside it) scores the same
    legacy = tmp_path / "legacy"
    shutil.copytree(run, legacy)
    save_model(task.network, legacy / "model.keras")
    from_legacy, _ = evaluate(legacy, out=tmp_path / "e4")
    assert from_legacy["data"] == str(legacy / "data")
    for result in (from_run, from_export, from_legacy):
        assert result["targets"]["shear_stress"]["rmse"] == pytest.approx(
            own["targets"]["shear_stress"]["rmse"], rel=1e-6)
        assert result["n_labelled_split"] == manifest["splits"]["test"]["n_labelled"]
        assert result["split_ratios"] == pytest.approx([float(r) for r in split.split(",")])
    assert from_export["data"] == "prepared again from the run's request"

    # The record changed since: its export is refused, not scored on other data.
    if kind == "file":
        record.write_text("".join(record.read_text().splitlines(keepends=True)[:-1]))
        with pytest.raises(ValueError, match="sha256"):
            evaluate(export, out=tmp_path / "e3")


def test_a_run_dir_without_its_data_is_an_error_and_writes_nothing(run_dir, tmp_path):
    run = tmp_path / "nodata"
    run.mkdir()
    for name in ("model.keras", "manifest.json"):
        shutil.copy(run_dir / name, run / name)
    with pytest.raises(ValueError, match="prepared data is missing"):
        run_command(["evaluate", str(run), "--out", str(tmp_path / "eval")])
    # on the command line: one line naming the run dir, exit 1
    assert main(["evaluate", str(run), "--out", str(tmp_path / "eval")]) == 1
    assert not (tmp_path / "eval").exists() and not list(tmp_path.glob(".eval-*"))


@pytest.fixture(scope="module")
def other_record(tmp_path_factory):
    """Another simulated experiment (seed 1) to score the run on zero-shot."""
    from labquake_tf.simulate import generate

    out = tmp_path_factory.mktemp("other") / "other.h5"
    return str(generate(preset="dds", duration=150.0, seed=1, out=str(out), spinup=20.0,
                        hop=0.05, window=0.1))


def test_zero_shot_uses_the_models_scalers(run_dir, other_record, tmp_path):
    from labquake_tf.data.scaling import MinMaxScaler

    result, out = evaluate(run_dir, other_record, out=tmp_path / "zs")
    assert result["split_ratios"] == pytest.approx([0.5, 0.1, 0.4])
    task = LabquakeRegressor.from_preset(run_dir)
    model, manifest = task.network, json.loads((run_dir / "manifest.json").read_text())
    with open(out / "predictions.csv") as f:
        row = next(csv.DictReader(f))
    # Re-derive the first prediction from the other record's test split with the MODEL's scalers.
    from labquake_tf.data import pipeline
    with_own = tmp_path / "other"
    prepare.prepare(other_record, with_own, seq_len=16, targets=TARGETS, split="0.5,0.1,0.4")
    arrays = pipeline.split_arrays(with_own, "test")
    x = np.concatenate([arrays["context"], arrays["features"]])[:16]
    fs = MinMaxScaler.from_dict(manifest["scaler"]["features"])
    ts = MinMaxScaler.from_dict(manifest["scaler"]["targets"])
    expected = ts.inverse_transform(model.predict(fs.transform(x)[None], verbose=0))[0]
    assert float(row["shear_stress_pred"]) == pytest.approx(expected[0], rel=1e-4, abs=1e-5)


def test_evaluate_refuses_a_model_that_does_not_fit_the_targets(run_dir, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    save_model(build_tcn(16, n_targets=2, filters=4, kernel_size=3, blocks=3), bad / "model.keras")
    shutil.copy(run_dir / "manifest.json", bad / "manifest.json")
    shutil.copytree(run_dir / "data", bad / "data")
    with pytest.raises(ValueError, match="model predicts 2 target"):
        run_command(["evaluate", str(bad), "--out", str(tmp_path / "eval")])
    assert not (tmp_path / "eval").exists()
    assert not list(tmp_path.glob(".eval-*"))
    with pytest.raises(FileNotFoundError, match="missing: no such file or folder"):
        run_command(["evaluate", str(tmp_path / "missing")])


def test_a_feature_name_mismatch_is_named(run_dir, dds_dir, tmp_path):
    run = tmp_path / "ch2"
    shutil.copytree(run_dir, run)
    manifest = rewrite_run(run, feature_names=["logvar_ch2"])
    # its own data says logvar_ch1: not the data it trained on
    with pytest.raises(ValueError, match="feature_names"):
        evaluate(run, out=tmp_path / "e")
    # zero-shot: p5198 is read with the channel the names say, not channel 1
    shutil.rmtree(run / "data")
    request = {**manifest["request"], "channels": None, "feature_names": ["logvar_ch2"]}
    rewrite_run(run, request=request)
    result, _ = evaluate(run, "p5198", out=tmp_path / "e")
    assert result["targets"]["shear_stress"]["n_labelled"] > 1000
    rewrite_run(run, feature_names=["logvar_ch3"], request={**request,
                                                            "feature_names": ["logvar_ch3"]})
    with pytest.raises(ValueError, match=r"p5198.csv: channels \[3\] not available"):
        evaluate(run, "p5198", out=tmp_path / "e3")
    assert not (tmp_path / "e3").exists()


def test_zero_shot_on_a_record_too_short_for_the_window_writes_nothing(run_dir, tmp_path):
    t = np.arange(100) * 0.1  # ten 1 s stick-slip cycles: the 10 % val part is one, 10 steps
    short = tmp_path / "short.npz"
    np.savez(short, time=t, logvar=np.zeros((100, 1), "f4"), shear_stress=(t % 1.0))
    with pytest.raises(ValueError, match=r"short.npz: split 'val' has \d+ steps, shorter than "
                                         r"one window of seq_len=16"):
        evaluate(run_dir, str(short), out=tmp_path / "eval")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["short.npz"]


def test_evaluate_reports_the_runs_interval_coverage_and_width(run_dir, tmp_path, capsys):
    half = {"score": "constant", "q": 0.05, "eps": 0.0, "coef": 0.0, "offset": 0.05}
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    rewrite_run(run, intervals={"method": "split-conformal", "coverage": 0.9, "members": 1,
                                "score": "constant", "targets": {t: half for t in TARGETS}})
    assert LabquakeRegressor.from_preset(run).intervals["targets"]["ttsf"] == half
    out = tmp_path / "eval"
    assert main(["evaluate", str(run), "--split", "test", "--out", str(out)]) == 0
    assert "90% interval covers" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    with open(out / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    for name in TARGETS:
        labelled = [r for r in rows if r[f"{name}_true"] != ""]  # the target's own mask
        col = {k: np.array([float(r[f"{name}_{k}"]) for r in labelled])
               for k in ("true", "pred", "lower", "upper")}
        np.testing.assert_allclose(col["upper"] - col["pred"], 0.05, atol=1e-4)  # 6 digits in the CSV
        np.testing.assert_allclose(col["pred"] - col["lower"], 0.05, atol=1e-4)
        inside = (col["true"] >= col["lower"]) & (col["true"] <= col["upper"])
        m = metrics["targets"][name]
        assert m["coverage"] == pytest.approx(inside.mean(), abs=2 / len(labelled))
        assert m["width"] == pytest.approx(0.1, rel=1e-4) and m["interval_target"] == 0.9
        phases = m["coverage_by_phase"]  # the two phases partition the labelled steps
        assert sum(p["n"] for p in phases.values()) == m["n_labelled"] == len(labelled)
        assert sum(p["coverage"] * p["n"] for p in phases.values()) == pytest.approx(
            m["coverage"] * m["n_labelled"])


def test_evaluate_scores_a_prepared_dir_given_with_data(run_dir, sim_record, tmp_path, capsys):
    # the run's own data given explicitly: the same scores as finding it
    own, _ = evaluate(run_dir, out=tmp_path / "own")
    given, _ = evaluate(run_dir, out=tmp_path / "given", data=run_dir / "data")
    assert given["data"] == str(run_dir / "data")
    assert given["targets"] == own["targets"]
    # another prepared dir: scored as it is, with its split, under the run's scalers
    other = tmp_path / "other"
    prepare.prepare(str(sim_record), other, seq_len=20, targets=TARGETS, split="0.5,0.1,0.4")
    assert main(["evaluate", str(run_dir), "--data", str(other), "--out",
                 str(tmp_path / "e")]) == 0
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert metrics["data"] == str(other) and metrics["split_ratios"] == pytest.approx([0.5, 0.1, 0.4])
    manifest = json.loads((other / "manifest.json").read_text())
    for name in TARGETS:  # every labelled test step of the given dir
        assert metrics["targets"][name]["n_labelled"] == manifest["splits"]["test"]["n_labelled"][name]


@pytest.mark.parametrize("change, message", [
    ({"target_names": ["shear_stress"]}, r"prepared for targets \['shear_stress'\], .* predicts "
                                         r"\['shear_stress', 'ttsf', 'ttef'\]; prepare it with "
                                         r"--targets shear_stress ttsf ttef"),
    ({"target_names": ["ttef", "ttsf", "shear_stress"]}, "prepared for targets"),  # order counts
    ({"seq_len": 8}, "prepared for windows of 8 steps, .* reads 16; prepare it again with "
                     "--seq-len 16"),
    ({"feature_names": ["std_ch1"]}, r"feature names differ.*logvar_ch1.*std_ch1"),
])
def test_evaluate_data_that_does_not_fit_the_run_is_named(run_dir, tmp_path, change, message):
    data = tmp_path / "data"
    shutil.copytree(run_dir / "data", data)
    manifest = json.loads((data / "manifest.json").read_text())
    (data / "manifest.json").write_text(json.dumps({**manifest, **change}))
    with pytest.raises(ValueError, match=message) as err:
        run_command(["evaluate", str(run_dir), "--data", str(data), "--out", str(tmp_path / "e")])
    assert str(data) in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # nothing written


def test_evaluate_data_excludes_dataset_and_ratios(run_dir, tmp_path, capsys):
    for extra in (["--dataset", "p5198"], ["--ratios", "0.5,0.1,0.4"]):
        assert main(["evaluate", str(run_dir), "--data", str(run_dir / "data"), *extra]) == 2
        assert "--data" in capsys.readouterr().err
