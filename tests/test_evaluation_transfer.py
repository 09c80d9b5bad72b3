import csv
import json

import pytest

from labquake_tf.cli import main
from labquake_tf.evaluation.transfer import write_tables
from labquake_tf.models import build_tcn
from labquake_tf.training.trainer import save_model


def test_write_tables_places_each_cell(tmp_path, monkeypatch):
    from labquake_tf.evaluation import figures

    saved, save = [], figures._save
    monkeypatch.setattr(figures, "_save", lambda fig, path: (
        saved.append([[(t.get_position(), t.get_text()) for t in ax.texts] for ax in fig.axes]),
        save(fig, path)))
    rows = [{"source": s, "target": t, "mode": m, "rmse": v, "r2": 0.5, "units": "MPa"}
            for s, t, m, v in [("a", "x", "zero-shot", 1.0), ("a", "y", "zero-shot", 2.0),
                               ("b", "x", "zero-shot", 3.0), ("b", "x", "fine-tuned", 0.25)]]
    write_tables(rows, tmp_path)
    md = (tmp_path / "transfer.md").read_text()
    assert "| a | 1 | 2 |" in md and "| b | 3 | — |" in md
    assert "| a | — | — |" in md and "| b | 0.25 | — |" in md
    with open(tmp_path / "transfer.csv") as f:
        assert [float(r["rmse"]) for r in csv.DictReader(f)] == [1.0, 2.0, 3.0, 0.25]
    for mode in ("zero-shot", "fine-tuned"):
        assert (tmp_path / f"transfer_{mode}.png").stat().st_size > 5000
    # Each heat map writes each cell's value at (target column, source row), none for gaps.
    zero, tuned = ([(tuple(map(round, pos)), text) for pos, text in fig[0] if isinstance(text, str)]
                   for fig in saved)
    assert sorted(zero) == [((0, 0), "1"), ((0, 1), "3"), ((1, 0), "2")]
    assert tuned == [((0, 1), "0.25")]


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
