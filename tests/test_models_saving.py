"""Where a saved model is and how each format reads back (``models.saving``), through
``LabquakeRegressor.from_preset``: legacy run dirs (a bare network with manifest.json
beside it), ``.keras`` files, exports old and new, and errors that name the file."""

import json
import shutil

import numpy as np
import pytest

from labquake_tf.data.scaling import MinMaxScaler
from labquake_tf.errors import DataError
from labquake_tf.files import write_json
from labquake_tf.models import build_from_preset, saving
from labquake_tf.task import LabquakeRegressor

MANIFEST = {"dataset": "unit", "feature_names": ["logvar_ch1"], "target_names": ["shear_stress"],
            "seq_len": 16}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run dir from before tasks existed: the bare network, its manifest beside it."""
    run = tmp_path_factory.mktemp("run")
    model = build_from_preset("tiny")
    model.save(run / "model.keras")
    write_json(run / "manifest.json", MANIFEST)
    x = np.random.default_rng(0).uniform(size=(3, 16, 1)).astype("float32")
    return run, x, model(x).numpy()


def _check(path, x, expected, manifest=MANIFEST):
    task = LabquakeRegressor.from_preset(path)
    assert isinstance(task, LabquakeRegressor)
    assert task.metadata["data"] == manifest and task.metadata["loaded_from"] == str(path)
    assert task.preprocessor.feature_names == ["logvar_ch1"]
    assert task.target_names == ["shear_stress"] and task.preprocessor.input_len == 16
    np.testing.assert_allclose(task.network(x).numpy(), expected, rtol=1e-5, atol=1e-6)
    return task


def test_loads_a_legacy_run_dir(run_dir):
    run, x, y = run_dir
    assert saving.locate(run) == (run / "model.keras", run / "manifest.json")
    assert saving.class_name(run / "model.keras") == "Functional"
    _check(run, x, y)


def test_loads_a_keras_file_with_its_manifest_beside_it(run_dir):
    run, x, y = run_dir
    assert saving.locate(run / "model.keras") == (run / "model.keras", run / "manifest.json")
    _check(run / "model.keras", x, y)


def test_loads_an_exported_savedmodel_version_dir_and_a_legacy_one(run_dir, tmp_path):
    from labquake_tf.serving.export import export_model

    run, x, y = run_dir
    # A real export (TF Serving's version dir + assets/), not a look-alike folder.
    manifest = {**MANIFEST, "scaler": {
        "features": MinMaxScaler([0.0], [1.0], ["logvar_ch1"]).to_dict(),
        "targets": MinMaxScaler([0.0], [1.0], ["shear_stress"]).to_dict()}}
    task = LabquakeRegressor.from_manifest(LabquakeRegressor.from_preset(run).network, manifest)
    version = export_model(task, "tcn", base_dir=tmp_path / "saved_models")
    assert (version / "saved_model.pb").stat().st_size > 1000
    # the export holds the whole task: no manifest needed beside it
    assert saving.locate(version) == (version / "assets" / "model.keras", None)
    loaded = _check(version, x, y, manifest)
    assert loaded.preprocessor == task.preprocessor and loaded.preprocessor.fitted
    # the model base path (NAME/, TF Serving's) loads its latest version
    np.testing.assert_allclose(LabquakeRegressor.from_preset(version.parent).network(x).numpy(),
                               y, rtol=1e-5, atol=1e-6)
    # an export written before tasks: the bare network and manifest.json in assets/
    old = tmp_path / "old" / "1"
    (old / "assets").mkdir(parents=True)
    (old / "saved_model.pb").write_bytes(b"graph")
    shutil.copy(run / "model.keras", old / "assets" / "model.keras")
    write_json(old / "assets" / "manifest.json", manifest)
    assert saving.locate(old) == (old / "assets" / "model.keras", old / "assets" / "manifest.json")
    _check(old, x, y, manifest)


def test_missing_manifest_unknown_path_and_damaged_file_are_named(run_dir, tmp_path):
    run, _, _ = run_dir
    shutil.copy(run / "model.keras", tmp_path / "model.keras")
    with pytest.raises(DataError, match=r"bare network.*manifest.json is missing"):
        LabquakeRegressor.from_preset(tmp_path)
    with pytest.raises(FileNotFoundError, match="nothing-here: no such file or folder"):
        LabquakeRegressor.from_preset(tmp_path / "nothing-here")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="model.keras missing"):
        LabquakeRegressor.from_preset(tmp_path / "empty")
    # a manifest that cannot say the model's inputs and outputs
    (tmp_path / "manifest.json").write_text(json.dumps({"dataset": "p5198",
                                                        "feature_names": ["logvar_ch1"]}))
    with pytest.raises(DataError, match=r"manifest.json: no 'target_names'"):
        LabquakeRegressor.from_preset(tmp_path)
    (tmp_path / "bad.keras").write_text("not a zip")
    with pytest.raises(DataError, match="bad.keras: not a Keras model"):
        LabquakeRegressor.from_preset(tmp_path / "bad.keras")
    (tmp_path / "weights.h5").write_bytes(b"")
    with pytest.raises(DataError, match="not a preset, run dir, SavedModel export or .keras"):
        LabquakeRegressor.from_preset(tmp_path / "weights.h5")


def test_versions_are_complete_integer_folders_only(tmp_path):
    for name in ("1", "3", "12-notes", "7"):
        (tmp_path / "m" / name).mkdir(parents=True)
    for name in ("1", "3", "12-notes"):
        (tmp_path / "m" / name / "saved_model.pb").write_bytes(b"x")
    assert saving.versions(tmp_path / "m") == [1, 3]  # 7 is half-written: no graph yet
    assert saving.versions(tmp_path / "none") == []


def test_float16_weights_halve_the_file_and_load_back(run_dir, tmp_path):
    run, x, y = run_dir
    shutil.copy(run / "model.keras", tmp_path / "model.keras")
    write_json(tmp_path / "manifest.json", MANIFEST)
    before = (tmp_path / "model.keras").stat().st_size
    assert saving.weights_dtype(tmp_path / "model.keras") == "float32"
    saving.store_weights_as(tmp_path / "model.keras", "float16")
    assert saving.weights_dtype(tmp_path / "model.keras") == "float16"
    assert (tmp_path / "model.keras").stat().st_size < before
    task = LabquakeRegressor.from_preset(tmp_path)
    assert {w.dtype for w in task.network.weights} == {"float32"}
    np.testing.assert_allclose(task.network(x).numpy(), y, atol=1e-2 * np.ptp(y) + 1e-3)
    assert json.loads(json.dumps(task.metadata))["data"] == MANIFEST
