import json
import shutil

import numpy as np
import pytest

from labquake_tf.models import build_from_preset
from labquake_tf.training import load_pretrained
from labquake_tf.training.artifacts import read_json, write_json

MANIFEST = {"dataset": "unit", "feature_names": ["logvar_ch1"], "target_names": ["shear_stress"],
            "seq_len": 16}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    model = build_from_preset("tiny")
    model.save(run / "model.keras")
    write_json(run / "manifest.json", MANIFEST)
    x = np.random.default_rng(0).uniform(size=(3, 16, 1)).astype("float32")
    return run, x, model(x).numpy()


def _check(path, x, expected):
    model, manifest = load_pretrained(path)
    assert manifest == MANIFEST
    np.testing.assert_allclose(model(x).numpy(), expected, rtol=1e-5, atol=1e-6)


def test_loads_a_run_dir(run_dir):
    _check(*run_dir)


def test_loads_a_keras_file_with_its_manifest_beside_it(run_dir):
    run, x, y = run_dir
    _check(run / "model.keras", x, y)


def test_loads_an_exported_savedmodel_version_dir(run_dir, tmp_path):
    from labquake_tf.data.scaling import MinMaxScaler
    from labquake_tf.serving.export import export_model

    run, x, y = run_dir
    # A real export (TF Serving's version dir + assets/), not a look-alike folder.
    manifest = {**MANIFEST, "scaler": {
        "features": MinMaxScaler([0.0], [1.0], ["logvar_ch1"]).to_dict(),
        "targets": MinMaxScaler([0.0], [1.0], ["shear_stress"]).to_dict()}}
    model, _ = load_pretrained(run)
    version = export_model(model, manifest, "tcn", base_dir=tmp_path / "saved_models")
    assert (version / "saved_model.pb").stat().st_size > 1000
    loaded, loaded_manifest = load_pretrained(version)
    assert loaded_manifest == manifest
    np.testing.assert_allclose(loaded(x).numpy(), y, rtol=1e-5, atol=1e-6)


def test_missing_manifest_is_named(run_dir, tmp_path):
    run, _, _ = run_dir
    shutil.copy(run / "model.keras", tmp_path / "model.keras")
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        load_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="no run dir"):
        load_pretrained(tmp_path / "nothing-here")


def test_write_json_is_atomic_and_read_json_names_bad_files(tmp_path):
    write_json(tmp_path / "a.json", {"x": np.float32(1.5), "n": np.int64(3)})
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 1.5, "n": 3}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]  # no temporary left behind
    (tmp_path / "b.json").write_text("{not json")
    with pytest.raises(ValueError, match="b.json"):
        read_json(tmp_path / "b.json")
