import csv
import json

import numpy as np
import pytest

from labquake_tf.cli import main, run_command
from labquake_tf.models import build_tcn
from labquake_tf.training.trainer import save_model

TARGETS = ["shear_stress", "ttsf", "ttef"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    save_model(build_tcn(16, n_targets=3, filters=4, kernel_size=3, blocks=3, dropout=0.0),
               run / "model.keras")
    (run / "manifest.json").write_text(json.dumps(
        {"dataset": "p4581", "target_names": TARGETS, "request": {"split": [0.7, 0.1, 0.2]}}))
    (run / "history.csv").write_text("epoch,loss,val_loss\n0,0.5,0.6\n1,0.2,0.3\n")
    return run


def test_evaluate_writes_metrics_predictions_and_plots(run_dir, dds_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["evaluate", str(run_dir), "--split", "test", "--out", str(out)]) == 0
    assert "shear_stress: RMSE" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["dataset"] == "p4581" and metrics["split_ratios"] == pytest.approx([0.7, 0.1, 0.2])
    assert set(metrics["targets"]) == set(TARGETS) and set(metrics["events"]) == {"ttsf", "ttef"}
    assert metrics["targets"]["shear_stress"]["units"] == "MPa"

    with open(out / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == metrics["n_windows"] > 100
    for name in TARGETS:
        true = np.array([float(r[f"{name}_true"]) for r in rows])
        pred = np.array([float(r[f"{name}_pred"]) for r in rows])
        m = metrics["targets"][name]
        assert m["rmse"] == pytest.approx(np.sqrt(np.mean((pred - true) ** 2)), rel=1e-4)
        assert m["mae"] <= m["rmse"]
        assert m["r2"] == pytest.approx(1 - np.sum((pred - true) ** 2)
                                        / np.sum((true - true.mean()) ** 2), rel=1e-4, abs=1e-4)
    ttsf = metrics["events"]["ttsf"]
    assert 2 <= ttsf["n_events"] <= 10 and sum(e["n_steps"] for e in ttsf["events"]) == len(rows)
    for png in ("test_shear_stress.png", "test_ttsf.png", "test_ttef.png", "loss.png"):
        assert (out / "plots" / png).stat().st_size > 5000, png


def test_evaluate_refuses_a_model_that_does_not_fit_the_targets(run_dir, dds_dir, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    save_model(build_tcn(16, n_targets=2, filters=4, kernel_size=3, blocks=3), bad / "model.keras")
    (bad / "manifest.json").write_text(json.dumps({"dataset": "p4581", "target_names": TARGETS}))
    with pytest.raises(ValueError, match="model predicts 2 target"):
        run_command(["evaluate", str(bad), "--out", str(tmp_path / "eval")])
    assert not (tmp_path / "eval").exists()
    assert not list(tmp_path.glob(".eval-*"))
    with pytest.raises(FileNotFoundError, match="no run dir"):
        run_command(["evaluate", str(tmp_path / "missing")])
