import json
import os
import pathlib

import numpy as np
import pytest

from labquake_tf.cli import main, run_command
from labquake_tf.task import LabquakeRegressor

FIXTURES = pathlib.Path(__file__).parent / "fixtures"


def test_import_torch_writes_a_run_dir_and_nothing_on_bad_input(tmp_path, capsys):
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=r"--targets"):
        run_command(["import-torch", str(FIXTURES / "torch_tcn_legacy.pth"), "--out", str(out)])
    with pytest.raises(ValueError, match=r"holds a 4-step model.*not --seq-len 70"):
        run_command(["import-torch", str(FIXTURES / "torch_tcn_legacy.pth"), "--out", str(out),
                     "--targets", "shear_stress", "ttsf", "ttef", "--seq-len", "70"])
    assert not out.exists() and os.listdir(tmp_path) == []
    assert main(["import-torch", str(FIXTURES / "torch_tcn_legacy.pth"), "--out", str(out),
                 "--targets", "shear_stress", "ttsf", "ttef"]) == 0
    assert "weight_g/weight_v" in capsys.readouterr().out
    task = LabquakeRegressor.from_preset(out)
    model, manifest, pre = task.network, task.metadata["data"], task.preprocessor
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert manifest["feature_names"] == pre.feature_names == ["std_ch1", "std_ch2"]
    assert manifest["feature_kind"] == pre.feature_kind == "std"
    assert manifest["seq_len"] == pre.seq_len == pre.input_len == 4
    assert manifest["target_names"] == pre.target_names == ["shear_stress", "ttsf", "ttef"]
    assert "scaler" not in manifest and not pre.fitted and task.intervals is None
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["norm_epsilon"] == 1e-5 and config["import"]["tensors"] == 25
    ref = np.load(FIXTURES / "torch_tcn_legacy.npz")
    np.testing.assert_allclose(model(ref["windows"], training=False).numpy(), ref["outputs"],
                               atol=1e-5, rtol=0)
    with pytest.raises(FileExistsError, match="not empty"):
        run_command(["import-torch", str(FIXTURES / "torch_tcn_legacy.pth"), "--out", str(out),
                     "--targets", "shear_stress", "ttsf", "ttef"])


def test_an_imported_model_fine_tunes_on_std_features_and_exports(sim_record, tmp_path):
    from labquake_tf.models import decoder_blocks
    from labquake_tf.serving.export import export_model, read_metadata

    src = tmp_path / "imported"
    assert main(["import-torch", str(FIXTURES / "torch_tcn_param.pth"), "--out", str(src)]) == 0
    imported = LabquakeRegressor.from_preset(src)
    with pytest.raises(ValueError, match="no feature/target scaler.*imported PyTorch model"):
        export_model(imported, "imp", base_dir=tmp_path / "saved")
    assert not (tmp_path / "saved" / "imp").exists() or not list((tmp_path / "saved" / "imp").iterdir())

    # scored zero-shot on a record's std features (scaler fit on its train part)
    assert main(["evaluate", str(src), "--dataset", str(sim_record), "--out",
                 str(tmp_path / "ev")]) == 0
    result = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert result["n_windows"] > 500 and np.isfinite(result["targets"]["shear_stress"]["rmse"])

    # the paper's recipe at fixture size: fewer blocks, a longer window, a fresh head
    out = tmp_path / "ft"
    assert main(["finetune", "--from", str(src), "--dataset", str(sim_record), "--blocks", "2",
                 "--seq-len", "12", "--epochs", "1", "--out", str(out)]) == 0
    tuned = LabquakeRegressor.from_preset(out)
    model, ft_manifest = tuned.network, tuned.metadata["data"]
    assert ft_manifest["feature_names"] == ["std_ch1"] and ft_manifest["feature_kind"] == "std"
    assert tuned.preprocessor.feature_kind == "std" and tuned.preprocessor.fitted
    config = json.loads((out / "config.json").read_text())["model"]
    assert config["norm_epsilon"] == 1e-5 and config["blocks"] == 2
    for new, old in zip(decoder_blocks(model), decoder_blocks(imported.network)[:2]):
        for a, b in zip(new.get_weights(), old.get_weights()):
            np.testing.assert_array_equal(a, b)
    test = json.loads((out / "metrics.json").read_text())["test"]["targets"]["shear_stress"]
    assert np.isfinite(test["rmse"])

    # with a scaler adopted from prepared std data, the import itself exports
    scaled = tmp_path / "scaled"
    with pytest.raises(ValueError, match=r"features \['std_ch1'\] differ.*\['logvar_ch1'\]"):
        run_command(["import-torch", str(FIXTURES / "torch_tcn_param.pth"), "--out", str(scaled),
                     "--features", "logvar", "--scaler-from", str(out / "data")])
    assert not scaled.exists()
    assert main(["import-torch", str(FIXTURES / "torch_tcn_param.pth"), "--out", str(scaled),
                 "--scaler-from", str(out / "data")]) == 0
    version = export_model(LabquakeRegressor.from_preset(scaled), "imp", base_dir=tmp_path / "saved")
    meta = read_metadata(version)
    assert meta["feature_names"] == ["std_ch1"] and meta["feature_kind"] == "std"
