"""Run directories as training writes them: atomic files, reused prepared data.
(Reading a run back is ``LabquakeRegressor.from_preset``'s: tests/test_models_saving.py.)"""

import json

import numpy as np
import pytest

from labquake_tf.files import read_json, write_json
from labquake_tf.models import build_from_preset
from labquake_tf.training.artifacts import reuse_prepared, save_model


def test_write_json_is_atomic_and_read_json_names_bad_files(tmp_path):
    write_json(tmp_path / "a.json", {"x": np.float32(1.5), "n": np.int64(3)})
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 1.5, "n": 3}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]  # no temporary left behind
    (tmp_path / "b.json").write_text("{not json")
    with pytest.raises(ValueError, match="b.json"):
        read_json(tmp_path / "b.json")


def test_save_model_leaves_only_the_model(tmp_path):
    save_model(build_from_preset("tiny"), tmp_path / "model.keras")
    assert [p.name for p in tmp_path.iterdir()] == ["model.keras"]


def test_reuse_prepared_takes_the_model_s_window_and_refuses_other_data(tmp_path):
    write_json(tmp_path / "manifest.json", {"target_names": ["ttsf"], "seq_len": 64})
    assert reuse_prepared(tmp_path, 40, ["ttsf"])["seq_len"] == 40
    with pytest.raises(ValueError, match=r"prepared for targets \['ttsf'\]"):
        reuse_prepared(tmp_path, 40, ["shear_stress"])
    with pytest.raises(ValueError, match="windows of 64 steps, the model reads 80"):
        reuse_prepared(tmp_path, 80, ["ttsf"])
