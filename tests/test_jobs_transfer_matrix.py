import csv
import json

import pytest

from labquake_tf.cli import main
from labquake_tf.models import build_tcn
from labquake_tf.training.artifacts import save_model


def test_transfer_matrix_from_an_existing_source_run(sim_record, tmp_path):
    from labquake_tf.data import prepare
    from labquake_tf.simulate import generate

    # two simulated experiments: the source run's own record and another seed
    a = str(sim_record)
    b = str(generate(preset="dds", duration=150.0, seed=1, out=str(tmp_path / "other.h5"),
                     spinup=20.0, hop=0.05, window=0.1))
    src = tmp_path / "src"
    manifest = prepare.prepare(a, src / "data", seq_len=12, targets=["shear_stress"],
                               split="0.7,0.1,0.2")
    save_model(build_tcn(12, filters=4, kernel_size=3, blocks=2, dropout=0.0), src / "model.keras")
    (src / "manifest.json").write_text(json.dumps(manifest))
    out = tmp_path / "transfer"
    assert main(["transfer-matrix", "--runs", f"{a}={src}", "--targets", f"{b},{a}",
                 "--finetune-epochs", "1", "--out", str(out)]) == 0
    with open(out / "transfer.csv") as f:
        rows = {(r["target"], r["mode"]): float(r["rmse"]) for r in csv.DictReader(f)}
    assert set(rows) == {(b, "zero-shot"), (a, "zero-shot"), (b, "fine-tuned")}
    cell = "sim-dds-other"  # a record path's cell is named by its stem, inside --out
    tuned = json.loads((out / "fine-tuned" / cell / "metrics.json").read_text())
    assert rows[(b, "fine-tuned")] == pytest.approx(tuned["test"]["targets"]["shear_stress"]["rmse"])
    zero = json.loads((out / "zero-shot" / cell / "metrics.json").read_text())
    assert zero["split_ratios"] == pytest.approx([0.5, 0.1, 0.4])
    assert rows[(b, "zero-shot")] == pytest.approx(zero["targets"]["shear_stress"]["rmse"])
    own = json.loads((out / "zero-shot" / "sim-dds-sim-dds" / "metrics.json").read_text())
    assert own["split_ratios"] == pytest.approx([0.7, 0.1, 0.2])  # the source's own test part
    assert own["data"] == str(src / "data")  # read from the run's own shards
    assert (out / "transfer_fine-tuned.png").exists() and b in (out / "transfer.md").read_text()
