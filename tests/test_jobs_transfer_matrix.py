import csv
import json

import pytest

from labquake_tf.cli import main
from labquake_tf.models import build_tcn
from labquake_tf.training.trainer import save_model


def test_transfer_matrix_from_an_existing_source_run(dds_dir, tmp_path):
    from labquake_tf.data import prepare

    src = tmp_path / "src"
    manifest = prepare.prepare("p5198", src / "data", seq_len=12, targets=["shear_stress"],
                               split="0.7,0.1,0.2")
    save_model(build_tcn(12, filters=4, kernel_size=3, blocks=2, dropout=0.0), src / "model.keras")
    (src / "manifest.json").write_text(json.dumps(manifest))
    out = tmp_path / "transfer"
    assert main(["transfer-matrix", "--runs", f"p5198={src}", "--targets", "p4581,p5198",
                 "--finetune-epochs", "1", "--out", str(out)]) == 0
    with open(out / "transfer.csv") as f:
        rows = {(r["target"], r["mode"]): float(r["rmse"]) for r in csv.DictReader(f)}
    assert set(rows) == {("p4581", "zero-shot"), ("p5198", "zero-shot"), ("p4581", "fine-tuned")}
    tuned = json.loads((out / "fine-tuned" / "p5198-p4581" / "metrics.json").read_text())
    assert rows[("p4581", "fine-tuned")] == pytest.approx(tuned["test"]["targets"]["shear_stress"]["rmse"])
    zero = json.loads((out / "zero-shot" / "p5198-p4581" / "metrics.json").read_text())
    assert zero["split_ratios"] == pytest.approx([0.5, 0.1, 0.4])
    own = json.loads((out / "zero-shot" / "p5198-p5198" / "metrics.json").read_text())
    assert own["split_ratios"] == pytest.approx([0.7, 0.1, 0.2])  # the source's own test part
    assert own["data"] == str(src / "data")  # read from the run's own shards
    assert (out / "transfer_fine-tuned.png").exists() and "p4581" in (out / "transfer.md").read_text()
