import json
import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from labquake_tf.cli import main, run_command
from labquake_tf.data.scaling import MinMaxScaler
from labquake_tf.errors import UsageError
from labquake_tf.models import build_from_preset
from labquake_tf.serving import export as export_lib
from labquake_tf.serving.export import export_model, next_version, read_metadata, versions
from labquake_tf.task import LabquakeRegressor

TARGETS = ["shear_stress", "ttsf", "ttef"]


def tiny_manifest(seq_len=16):
    """A data manifest as ``labquake prepare`` writes it, with non-trivial scalers."""
    features = MinMaxScaler().fit(np.array([[-2.0], [3.0]]), names=["logvar_ch1"])
    targets = MinMaxScaler().fit(np.array([[1.0, 0.0, 0.5], [5.0, 10.0, 12.5]]), names=TARGETS)
    return {"dataset": "p4581", "feature_names": ["logvar_ch1"], "target_names": TARGETS,
            "units": {"shear_stress": "MPa", "ttsf": "s", "ttef": "s"}, "dt": 0.01,
            "seq_len": seq_len, "scaler": {"features": features.to_dict(),
                                          "targets": targets.to_dict()}}


def tiny_model(seed=0):
    keras.utils.set_random_seed(seed)
    return build_from_preset("tiny", n_features=1, n_targets=3)


def tiny_task(seed=0, manifest=None, **metadata):
    """``tiny_model`` as a task on ``tiny_manifest``'s data (its scalers and names)."""
    return LabquakeRegressor.from_manifest(tiny_model(seed), manifest or tiny_manifest(),
                                           metadata=metadata)


def raw_windows(n=6, seed=1):
    return np.random.default_rng(seed).uniform(-2, 3, (n, 16, 1)).astype("float32")


_SHARED = {}


def shared_export(tmp_path_factory):
    """A run dir as ``labquake pretrain`` leaves it (the whole task in model.keras, the
    data manifest beside it), exported once per session with ``labquake export``; the
    server and predict tests serve the same export."""
    if not _SHARED:
        run = tmp_path_factory.mktemp("run")
        task = tiny_task(preset="tiny")
        model = task.network
        task.save(run / "model.keras")
        (run / "manifest.json").write_text(json.dumps(tiny_manifest()))
        (run / "config.json").write_text(json.dumps({"preset": "tiny"}))
        base = tmp_path_factory.mktemp("saved_models")
        assert main(["export", str(run), "--name", "tiny", "--base-dir", str(base)]) == 0
        _SHARED.update(model=model, path=base / "tiny" / "1", run=run)
    return _SHARED["model"], _SHARED["path"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model, path = shared_export(tmp_path_factory)
    return model, path, tf.saved_model.load(str(path))


def test_layout_versions_and_assets(exported, tmp_path):
    model, path, _ = exported
    assert path.name == "1" and versions(path.parent) == [1]
    for rel in ("saved_model.pb", "variables", "assets/model.keras", "assets/metadata.json"):
        assert (path / rel).exists(), rel
    # the data manifest rides inside the task, not beside it
    assert not (path / "assets/manifest.json").exists()
    meta = read_metadata(path)
    assert meta["dataset"] == "p4581" and meta["seq_len"] == 16 and meta["preset"] == "tiny"
    assert meta["target_units"] == {"shear_stress": "MPa", "ttsf": "s", "ttef": "s"}
    assert meta["hop"] == 0.01 and meta["package_version"]
    assert meta["source"] == str(_SHARED["run"].resolve())  # labquake export says what it read
    # The .keras asset is the same task: fine-tuning can start from an export.
    reloaded = keras.saving.load_model(path / "assets/model.keras")
    assert isinstance(reloaded, LabquakeRegressor)
    assert reloaded.metadata["data"] == tiny_manifest()
    x = raw_windows()
    np.testing.assert_allclose(reloaded.network.predict(x, verbose=0),
                               model.predict(x, verbose=0), rtol=1e-5, atol=1e-6)


def test_signatures_by_name_in_savedmodel_proto(exported):
    from tensorflow.python.tools import saved_model_utils  # what saved_model_cli show reads

    _, path, _ = exported
    defs = saved_model_utils.get_meta_graph_def(str(path), "serve").signature_def
    assert set(defs) >= {"serving_default", "serving_scaled", "metadata"}
    inp = defs["serving_default"].inputs["ae_features"]
    assert inp.dtype == tf.float32.as_datatype_enum
    assert [d.size for d in inp.tensor_shape.dim] == [-1, 16, 1]
    assert set(defs["serving_default"].outputs) == set(TARGETS)
    assert all(o.dtype == tf.float32.as_datatype_enum
               for o in defs["serving_default"].outputs.values())


def test_physical_outputs_equal_inverse_scaled_model_output(exported):
    model, _, loaded = exported
    manifest = tiny_manifest()
    features = MinMaxScaler.from_dict(manifest["scaler"]["features"])
    targets = MinMaxScaler.from_dict(manifest["scaler"]["targets"])
    x = raw_windows()
    expected = targets.inverse_transform(model.predict(features.transform(x), verbose=0))
    out = loaded.signatures["serving_default"](ae_features=tf.constant(x))
    for i, name in enumerate(TARGETS):
        assert out[name].shape == (6,) and out[name].dtype == tf.float32
        np.testing.assert_allclose(out[name].numpy(), expected[:, i], rtol=1e-5, atol=1e-5)
    scaled = loaded.signatures["serving_scaled"](ae_features=tf.constant(features.transform(x)))
    np.testing.assert_allclose(np.stack([scaled[t].numpy() for t in TARGETS], 1),
                               model.predict(features.transform(x), verbose=0), atol=1e-5)
    meta = json.loads(loaded.signatures["metadata"]()["metadata_json"].numpy())
    assert meta["target_names"] == TARGETS


def test_loads_without_labquake_tf(exported):
    # TF Serving has no Python: the graph must not need the custom layer classes.
    _, path, loaded = exported
    x = raw_windows(2)
    expected = loaded.signatures["serving_default"](ae_features=tf.constant(x))["ttsf"].numpy()
    code = ("import sys, numpy as np, tensorflow as tf\n"
            f"m = tf.saved_model.load({str(path)!r})\n"
            f"x = np.array({x.tolist()!r}, np.float32)\n"
            "print(m.signatures['serving_default'](ae_features=x)['ttsf'].numpy().tolist())\n"
            "assert not [k for k in sys.modules if k.startswith('labquake_tf')]\n")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": ""}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, cwd=path, timeout=90)
    assert done.returncode == 0, done.stderr[-2000:]
    np.testing.assert_allclose(json.loads(done.stdout.strip().splitlines()[-1]), expected,
                               rtol=1e-5)


def fake_version(model_dir, version):
    path = model_dir / str(version)
    path.mkdir(parents=True)
    (path / "saved_model.pb").write_bytes(b"old")
    return path


def test_next_version_force_and_no_overwrite(tmp_path):
    task = tiny_task()
    fake_version(tmp_path / "m", 1)
    fake_version(tmp_path / "m", 7)
    (tmp_path / "m" / "12-notes").mkdir()  # not a version: TF Serving ignores it too
    with pytest.raises(FileExistsError, match="force"):
        export_model(task, "m", base_dir=tmp_path, version=7)
    assert (tmp_path / "m" / "7" / "saved_model.pb").read_bytes() == b"old"
    path = export_model(task, "m", base_dir=tmp_path, version=7, force=True)
    assert path == tmp_path / "m" / "7" and (path / "assets" / "model.keras").exists()
    assert (path / "saved_model.pb").read_bytes() != b"old"
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["1", "12-notes", "7"]
    assert versions(tmp_path / "m") == [1, 7] and next_version(tmp_path / "m") == 8


def test_failed_export_leaves_nothing(tmp_path, monkeypatch):
    class CrashingArchive:
        def write_out(self, filepath, **kwargs):
            (pathlib.Path(filepath) / "saved_model.pb").write_bytes(b"half")
            raise OSError("disk full")

    monkeypatch.setattr(export_lib, "_archive", lambda *args: CrashingArchive())
    fake_version(tmp_path / "m", 1)
    with pytest.raises(OSError, match="disk full"):
        export_model(tiny_task(), "m", base_dir=tmp_path)
    with pytest.raises(OSError, match="disk full"):
        export_model(tiny_task(), "m", base_dir=tmp_path, version=1, force=True)
    assert [p.name for p in (tmp_path / "m").iterdir()] == ["1"]
    assert (tmp_path / "m" / "1" / "saved_model.pb").read_bytes() == b"old"


def test_bad_manifest_or_model_is_named(tmp_path):
    manifest = tiny_manifest()
    del manifest["scaler"]
    with pytest.raises(ValueError, match="no feature/target scaler"):
        export_model(tiny_task(manifest=manifest), "m", base_dir=tmp_path)
    with pytest.raises(ValueError, match="seq_len=32"):
        export_model(tiny_task(manifest=tiny_manifest(seq_len=32)), "m", base_dir=tmp_path)
    with pytest.raises(UsageError, match="positive integer"):
        export_model(tiny_task(), "m", base_dir=tmp_path, version=0)
    with pytest.raises(UsageError, match="named by a positive integer"):
        tiny_task().export(tmp_path / "m" / "latest")
    assert not (tmp_path / "m").exists() or list((tmp_path / "m").iterdir()) == []


def test_mixed_float16_export_serves_float32(tmp_path):
    policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = tiny_model()
    finally:
        keras.config.set_dtype_policy(policy)
    path = export_model(LabquakeRegressor.from_manifest(model, tiny_manifest()), "mp",
                        base_dir=tmp_path)
    fn = tf.saved_model.load(str(path)).signatures["serving_default"]
    assert fn.structured_input_signature[1]["ae_features"].dtype == tf.float32
    out = fn(ae_features=tf.constant(raw_windows()))
    assert {v.dtype for v in out.values()} == {tf.float32}
    # The values too: the same weights computed in float32, scaled as the manifest says;
    # float16 activations cost about 3 decimal digits.
    reference = tiny_model()
    reference.set_weights(model.get_weights())
    manifest = tiny_manifest()
    x = MinMaxScaler.from_dict(manifest["scaler"]["features"]).transform(raw_windows())
    expected = MinMaxScaler.from_dict(manifest["scaler"]["targets"]).inverse_transform(
        reference.predict(x, verbose=0))
    for i, name in enumerate(TARGETS):
        got = out[name].numpy().reshape(-1)
        np.testing.assert_allclose(got, expected[:, i], rtol=2e-2, atol=2e-2 * np.ptp(expected))


def test_export_cli_refuses_to_overwrite(exported):
    # Exporting from an export works (from_preset reads assets/), replacing one does not.
    _, path, _ = exported
    stamp = (path / "saved_model.pb").stat().st_mtime_ns
    with pytest.raises(FileExistsError, match="already exists"):
        run_command(["export", str(path), "--name", "tiny", "--base-dir", str(path.parents[1]),
                     "--version", "1"])
    assert (path / "saved_model.pb").stat().st_mtime_ns == stamp


def test_warmup_file_is_tf_servings_prediction_log(exported):
    from tensorflow_serving.apis import prediction_log_pb2

    _, path, obj = exported
    records = list(tf.data.TFRecordDataset(str(path / export_lib.WARMUP_FILE)).as_numpy_iterator())
    sizes = list(export_lib.WARMUP_BATCHES) * export_lib.WARMUP_REPEATS
    assert len(records) == len(sizes) and export_lib.WARMUP_REPEATS > 1
    lo, hi = -2.0, 3.0  # tiny_manifest's feature range: real-shaped, in-range windows
    for record, n in zip(records, sizes):
        log = prediction_log_pb2.PredictionLog.FromString(record)
        assert log.WhichOneof("log_type") == "predict_log"
        request = log.predict_log.request
        assert request.model_spec.name == "tiny"
        assert request.model_spec.signature_name == "serving_default"
        x = tf.make_ndarray(request.inputs["ae_features"])
        assert x.shape == (n, 16, 1) and x.dtype == np.float32
        assert lo <= x.min() and x.max() <= hi and x.std() > 0
        # The request runs as it is on the exported signature.
        out = obj.signatures["serving_default"](ae_features=tf.constant(x))
        assert out["shear_stress"].shape == (n,)
    assert [r["inputs"]["ae_features"].shape[0] for r in export_lib.read_warmup(path)] == sizes
