"""``models.Preprocessor``: feature and target names, window, scalers and units of one
model; the same float32 numbers on numpy and in a graph; saved with the model."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from labquake_tf.data.scaling import MinMaxScaler
from labquake_tf.models import Preprocessor

TARGETS = ["shear_stress", "ttsf", "ttef"]


def manifest(**changes):
    """A data manifest as ``labquake prepare`` writes it (three targets)."""
    return {"dataset": "p4581", "feature_names": ["logvar_ch1", "logvar_ch2"],
            "target_names": TARGETS, "seq_len": 16, "dt": 0.01,
            "units": {"shear_stress": "MPa", "ttsf": "s", "ttef": "s"},
            "scaler": {"features": MinMaxScaler([-2.0, 0.0], [3.0, 4.0],
                                                ["logvar_ch1", "logvar_ch2"]).to_dict(),
                       "targets": MinMaxScaler([1.0, 0.0, 0.5], [5.0, 10.0, 12.5],
                                               TARGETS).to_dict()},
            **changes}


def test_from_manifest_reads_names_window_scalers_and_units():
    pre = Preprocessor.from_manifest(manifest(), input_len=28)
    assert pre.feature_names == ["logvar_ch1", "logvar_ch2"] and pre.target_names == TARGETS
    assert (pre.seq_len, pre.input_len, pre.dt) == (16, 28, 0.01)
    assert pre.feature_kind == "logvar" and pre.fitted
    assert pre.units == {"shear_stress": "MPa", "ttsf": "s", "ttef": "s"}
    np.testing.assert_array_equal(pre.target_scaler.data_max, [5.0, 10.0, 12.5])
    assert "+12 steps of decoder history" in repr(pre) and "ttsf (s)" in repr(pre)
    # one target of a data dir prepared for three: its own column of the scaler, by name
    one = Preprocessor.from_manifest(manifest(target_names=["ttsf"]))
    assert one.input_len == one.seq_len == 16
    np.testing.assert_array_equal(one.target_scaler.data_min, [0.0])
    np.testing.assert_array_equal(one.target_scaler.data_max, [10.0])
    assert one.units == {"ttsf": "s"} and one.target_scale.tolist() == [10.0]
    # units as a list aligned with target_names (older manifests), and std features
    std = MinMaxScaler([0.0, 0.0], [3.0, 4.0], ["std_ch1", "std_ch2"]).to_dict()
    old = Preprocessor.from_manifest(manifest(units=["MPa", "s", "s"], feature_kind="std",
                                              feature_names=["std_ch1", "std_ch2"],
                                              scaler={**manifest()["scaler"], "features": std}))
    # a scaler is matched to its columns by name
    with pytest.raises(ValueError, match=r"fitted on columns \['logvar_ch1', 'logvar_ch2'\]"):
        Preprocessor.from_manifest(manifest(feature_names=["std_ch1", "std_ch2"]))
    assert old.units["ttef"] == "s" and old.feature_kind == "std"


def test_scaling_is_the_scaler_s_on_numpy_and_on_tensors():
    pre = Preprocessor.from_manifest(manifest())
    x = np.random.default_rng(0).uniform(-2, 4, size=(5, 16, 2))
    expected = (x - np.array([-2.0, 0.0])) / np.array([5.0, 4.0])
    scaled = pre.scale_features(x)
    assert scaled.dtype == np.float32 and scaled.shape == x.shape
    np.testing.assert_allclose(scaled, expected, rtol=1e-6)
    # in a graph (tf.data, a SavedModel signature): the same float32 arithmetic, up to
    # one unit in the last place (grappler may divide by multiplying by the reciprocal)
    in_graph = tf.function(pre.scale_features)(tf.constant(x, tf.float32))
    assert isinstance(in_graph, tf.Tensor) and in_graph.dtype == tf.float32
    np.testing.assert_allclose(in_graph.numpy(), pre.scale_features(x.astype(np.float32)),
                               rtol=0, atol=float(np.finfo(np.float32).eps))
    y = np.array([[0.0, 0.5, 1.0], [1.0, 0.0, 0.25]])
    physical = pre.unscale_targets(y)
    assert physical.dtype == np.float64
    np.testing.assert_allclose(physical, [[1.0, 5.0, 12.5], [5.0, 0.0, 3.5]])
    np.testing.assert_allclose(pre.scale_targets(physical), y, atol=1e-7)
    np.testing.assert_allclose(pre.unscale_targets(tf.constant(y, tf.float32)).numpy(),
                               physical, rtol=1e-6)


def test_config_round_trips_through_keras_serialisation():
    pre = Preprocessor.from_manifest(manifest(), input_len=20)
    again = Preprocessor.from_config(json.loads(json.dumps(pre.get_config())))
    assert again == pre and again is not pre
    revived = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(pre))
    assert isinstance(revived, Preprocessor) and revived == pre
    x = np.random.default_rng(1).uniform(-2, 3, size=(3, 20, 2))
    np.testing.assert_array_equal(revived.scale_features(x), pre.scale_features(x))
    assert pre != Preprocessor.from_manifest(manifest(), input_len=24)


def test_an_unfitted_preprocessor_says_so_and_takes_scalers_later():
    pre = Preprocessor(["std_ch1"], ["shear_stress"], seq_len=8)
    assert not pre.fitted and pre.feature_kind == "std" and pre.units == {"shear_stress": "MPa"}
    # a PyTorch import knows no step length either: its card still prints
    assert "none (fitted on the data's training part when scored)" in repr(pre)
    assert "8 steps of unknown length" in repr(pre)
    with pytest.raises(ValueError, match="no feature scaler .*--scaler-from"):
        pre.scale_features(np.zeros((1, 8, 1)))
    with pytest.raises(ValueError, match="no target scaler"):
        pre.unscale_targets(np.zeros((1, 1)))
    fitted = pre.with_scalers(MinMaxScaler([0.0], [2.0]), {"min": [1.0], "max": [3.0]})
    assert fitted.fitted and not pre.fitted
    assert fitted.unscale_targets([[0.5]]).tolist() == [[2.0]]
    assert fitted.feature_scaler.names == ["std_ch1"]  # columns named by the preprocessor


def test_bad_configurations_are_named():
    with pytest.raises(ValueError, match=r"scaler of \(2,\) values for columns \['logvar_ch1'\]"):
        Preprocessor(["logvar_ch1"], ["ttsf"], seq_len=8,
                     feature_scaler={"min": [0.0, 1.0], "max": [1.0, 2.0]})
    with pytest.raises(ValueError, match="seq_len=32 .* input_len=16"):
        Preprocessor(["logvar_ch1"], ["ttsf"], seq_len=32, input_len=16)
    with pytest.raises(ValueError, match="features must be one of"):
        Preprocessor(["logvar_ch1"], ["ttsf"], seq_len=8, feature_kind="rms")
