import json

import keras
import numpy as np
import pytest

from labquake_tf.data.scaling import MinMaxScaler
from labquake_tf.models import build_tcn
from labquake_tf.serving import Client
from labquake_tf.serving.export import export_model
from labquake_tf.serving.server import Server
from labquake_tf.serving.step import StepClient, state_specs
from labquake_tf.task import LabquakeRegressor


def _manifest(model):
    return {"dataset": "x", "feature_names": ["logvar_ch1"],
            "target_names": ["shear_stress", "ttsf"], "seq_len": int(model.input_shape[1]),
            "dt": 0.1,
            "scaler": {"features": {"min": [1.0], "max": [3.0]},
                       "targets": {"min": [1.0, 0.0], "max": [2.0, 5.0]}}}


@pytest.mark.parametrize("members", [1, 3])  # a fine-tuning ensemble's heads branch
def test_serving_step_through_the_rest_server_matches_predict(tmp_path, members):
    from labquake_tf.models.heads import add_heads

    keras.utils.set_random_seed(0)
    model = add_heads(build_tcn(6, n_features=1, n_targets=2, filters=4, kernel_size=3,
                                blocks=2, dropout=0.0, streamable=True), members)
    manifest = _manifest(model)
    path = export_model(LabquakeRegressor.from_manifest(model, manifest), "s", base_dir=tmp_path)
    meta = json.loads((path / "assets" / "metadata.json").read_text())
    assert "serving_step" in meta["signatures"]
    assert meta["stream"]["states"] == {k: list(v) for k, v in state_specs(model).items()}
    assert state_specs(model)["state_1_conv2"] == (4, 4)  # (k-1)·d = 2·2 steps, 4 filters

    x = np.random.default_rng(0).uniform(1, 3, size=(30, 1)).astype("float32")
    length = model.input_shape[1]
    windows = MinMaxScaler.from_dict(manifest["scaler"]["features"]).transform(
        np.stack([x[i:i + length] for i in range(len(x) - length + 1)]))
    expected = MinMaxScaler.from_dict(manifest["scaler"]["targets"]).inverse_transform(
        model.predict(windows, verbose=0))
    # The same numbers from the export dir through the in-process Streamer.
    streamed = LabquakeRegressor.from_preset(path).streamer().update_features(x)
    np.testing.assert_allclose(streamed.values["ttsf"], expected[:, 1], atol=1e-5)
    with Server(tmp_path / "s", port=0) as server:
        stepper = StepClient(Client(server.url, "s"))
        assert stepper.warmup == length
        outs = [stepper.step(row) for row in x]
        assert all(o is None for o in outs[:length - 1])
        got = np.array([[o["shear_stress"], o["ttsf"]] for o in outs[length - 1:]])
        np.testing.assert_allclose(got, expected, atol=1e-5)
        with pytest.raises(ValueError, match="1 finite value"):
            stepper.step([np.nan])
        stepper.reset()
        assert stepper.step(x[0]) is None and stepper.n_steps == 1


def test_reference_export_has_no_step_signature(tmp_path):
    model = build_tcn(6, filters=4, kernel_size=3, blocks=2)
    manifest = {**_manifest(model), "target_names": ["ttsf"],
                "scaler": {"features": {"min": [1.0], "max": [3.0]},
                           "targets": {"min": [0.0], "max": [5.0]}}}
    path = export_model(LabquakeRegressor.from_manifest(model, manifest), "r", base_dir=tmp_path)
    assert "serving_step" not in json.loads((path / "assets" / "metadata.json").read_text())[
        "signatures"]
    with Server(tmp_path / "r", port=0) as server:
        with pytest.raises(KeyError, match="no signature 'serving_step'"):
            StepClient(Client(server.url, "r"))
