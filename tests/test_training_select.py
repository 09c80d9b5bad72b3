import json

import numpy as np
import pytest

from labquake_tf.models import Preprocessor, build_tcn, decoder_blocks
from labquake_tf.task import LabquakeRegressor
from labquake_tf.training import select
from labquake_tf.training.artifacts import save_model


def test_candidates_hold_what_the_user_fixed():
    assert select.candidates(4, 64) == ([2, 3, 4], [16, 32, 64])
    assert select.candidates(3, 20) == ([2, 3], [16, 20, 32, 64])
    assert select.candidates(4, 64, blocks=3) == ([3], [16, 32, 64])
    assert select.candidates(4, 64, seq_len=20) == ([2, 3, 4], [20])


def test_finetune_chooses_blocks_and_window_on_validation_and_records_them(
        sim_record, tmp_path, monkeypatch):
    from labquake_tf.cli import main

    monkeypatch.setattr(select, "BLOCKS", (1, None))
    monkeypatch.setattr(select, "SEQ_LENS", (8, None))
    src = tmp_path / "src"
    src.mkdir()
    network = build_tcn(12, filters=8, kernel_size=3, blocks=2, dropout=0.0)
    source = LabquakeRegressor(network, Preprocessor(["logvar_ch1"], ["shear_stress"], seq_len=12),
                               metadata={"data": {"dataset": "p5198"}})
    save_model(source, src / "model.keras")
    run = tmp_path / "ft"
    assert main(["finetune", "--from", str(src), "--dataset", str(sim_record), "--target", "ttsf",
                 "--epochs", "2", "--ensemble", "2", "--out", str(run)]) == 0
    selection = json.loads((run / "config.json").read_text())["finetune"]["selection"]
    table = selection["candidates"]
    assert {(r["blocks"], r["seq_len"]) for r in table} == {(1, 8), (2, 8), (1, 12), (2, 12)}
    assert all(np.isfinite(r["val_rmse"]) and r["val_rmse"] > 0 for r in table)
    best = min(table, key=lambda r: r["val_rmse"])
    assert selection["chosen"] == {"blocks": best["blocks"], "seq_len": best["seq_len"]}
    assert json.loads((run / "metrics.json").read_text())["selection"] == selection
    # the run IS the chosen shape, its data prepared for that window
    task = LabquakeRegressor.from_preset(run)
    manifest = json.loads((run / "data" / "manifest.json").read_text())
    assert task.network.input_shape[1] == best["seq_len"] == manifest["seq_len"]
    assert task.preprocessor.input_len == task.metadata["data"]["seq_len"] == best["seq_len"]
    assert len(decoder_blocks(task.network)) == best["blocks"]
    assert task.metadata["training"]["selection"] == selection


def test_search_refuses_windows_shorter_than_a_candidate():
    source = build_tcn(12, filters=4, kernel_size=3, blocks=2, dropout=0.0)
    x = np.zeros((4, 10, 1), "float32")
    with pytest.raises(ValueError, match="cannot be cut"):
        select.search(source, (x, x[:, 0]), (x, x[:, 0]), 1.0, None, seq_len=12)
