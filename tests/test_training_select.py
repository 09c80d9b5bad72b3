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
    # the record has one AE channel: channel 2 was tried, found missing, and is not a row
    assert {(r["channel"], r["blocks"], r["seq_len"]) for r in table} == {
        (1, 1, 8), (1, 2, 8), (1, 1, 12), (1, 2, 12)}
    assert all(np.isfinite(r["val_rmse"]) and r["val_rmse"] > 0 for r in table)
    best = min(table, key=lambda r: r["val_rmse"])
    assert selection["chosen"] == {"channel": 1, "blocks": best["blocks"],
                                   "seq_len": best["seq_len"]}
    assert json.loads((run / "metrics.json").read_text())["selection"] == selection
    # the run IS the chosen shape, its data prepared for that window
    task = LabquakeRegressor.from_preset(run)
    manifest = json.loads((run / "data" / "manifest.json").read_text())
    assert task.network.input_shape[1] == best["seq_len"] == manifest["seq_len"]
    assert task.preprocessor.input_len == task.metadata["data"]["seq_len"] == best["seq_len"]
    assert len(decoder_blocks(task.network)) == best["blocks"]
    assert task.metadata["training"]["selection"] == selection


def _two_channel_csv(path, n_rows=2400, period=10.0, rate=10.0):
    """A DDS CSV whose channel 1 is noise and channel 2 follows the loading cycle."""
    t = 100.0 + np.arange(n_rows) / rate
    phase = ((t - 100.0) % period) / period
    rng = np.random.default_rng(0)
    var1 = 10 ** (3.0 + 0.3 * rng.normal(size=n_rows))
    var2 = 10 ** (3.0 + phase + 0.02 * rng.normal(size=n_rows))
    to_next = period * (1 - phase) - 1 / rate
    columns = {"Time": t, "ShearStress": 5.0 + 0.5 * phase, "Var_Ch1": var1, "Var_Ch2": var2,
               "TimeToStartFailure": to_next, "TimeToEndFailure": to_next + 1 / rate}
    lines = [",".join(columns)] + [",".join(repr(float(v[i])) for v in columns.values())
                                   for i in range(n_rows)]
    path.write_text("\n".join(lines) + "\n")
    return path


def _one_channel_source(folder, seq_len=12):
    folder.mkdir()
    network = build_tcn(seq_len, filters=8, kernel_size=3, blocks=2, dropout=0.0)
    save_model(LabquakeRegressor(network, Preprocessor(["logvar_ch1"], ["shear_stress"],
                                                       seq_len=seq_len)), folder / "model.keras")
    return folder


def test_search_chooses_the_channel_that_hears_the_cycle(tmp_path, monkeypatch):
    from labquake_tf.cli import main

    monkeypatch.setattr(select, "BLOCKS", (None,))
    monkeypatch.setattr(select, "SEQ_LENS", (None,))
    record = _two_channel_csv(tmp_path / "two.csv")
    src = _one_channel_source(tmp_path / "src")
    run = tmp_path / "ft"
    assert main(["finetune", "--from", str(src), "--dataset", str(record), "--target", "ttsf",
                 "--epochs", "15", "--ensemble", "1", "--out", str(run)]) == 0
    selection = json.loads((run / "config.json").read_text())["finetune"]["selection"]
    rmse = {r["channel"]: r["val_rmse"] for r in selection["candidates"]}
    assert set(rmse) == {1, 2}  # channel 3 was tried: the record has none
    assert rmse[2] < rmse[1] and selection["chosen"]["channel"] == 2
    task = LabquakeRegressor.from_preset(run)
    assert task.preprocessor.feature_names == ["logvar_ch2"]
    manifest = json.loads((run / "data" / "manifest.json").read_text())
    assert manifest["feature_names"] == ["logvar_ch2"] and manifest["request"]["channels"] == [2]
    assert sorted(p.name for p in run.iterdir() if p.name.startswith("data")) == ["data"]
    # the task reads channel 2 from the raw record by itself
    pred = task.predict(record)
    assert np.isfinite(pred["ttsf"]).all() and len(pred["ttsf"]) > 1000


def test_a_fixed_channel_is_read_and_a_bad_one_refused(tmp_path, capsys):
    from labquake_tf.cli import main

    record = _two_channel_csv(tmp_path / "two.csv")
    src = _one_channel_source(tmp_path / "src")
    run = tmp_path / "ft"
    assert main(["finetune", "--from", str(src), "--dataset", str(record), "--epochs", "1",
                 "--ensemble", "1", "--channel", "2", "--out", str(run)]) == 0
    assert LabquakeRegressor.from_preset(run).preprocessor.feature_names == ["logvar_ch2"]
    bad = tmp_path / "bad"
    assert main(["finetune", "--from", str(src), "--dataset", str(record), "--epochs", "1",
                 "--channel", "3", "--out", str(bad)]) == 1
    assert "channels [3] not available (the file has channels 1..2" in capsys.readouterr().err
    assert main(["finetune", "--from", str(src), "--dataset", str(record), "--epochs", "1",
                 "--channel", "two", "--out", str(bad)]) == 2
    assert "--channel: expected 'auto' or a 1-based channel number, got 'two'" in (
        capsys.readouterr().err)
    assert not bad.exists()


def test_search_refuses_windows_shorter_than_a_candidate():
    source = build_tcn(12, filters=4, kernel_size=3, blocks=2, dropout=0.0)
    x = np.zeros((4, 10, 1), "float32")
    with pytest.raises(ValueError, match="cannot be cut"):
        select.search(source, (x, x[:, 0]), (x, x[:, 0]), 1.0, None, seq_len=12)
