import keras
import numpy as np
import pytest
import tensorflow as tf

from labquake_tf.models import build_from_preset
from labquake_tf.training import TrainConfig, get_strategy, set_precision, train
from labquake_tf.training.strategy import is_chief
from test_training_trainer import batched, small_model, windows


@pytest.fixture
def restore_policy():
    yield
    keras.mixed_precision.set_global_policy("float32")


def test_auto_picks_the_default_strategy_on_cpu(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    strategy = get_strategy("auto")
    assert strategy is tf.distribute.get_strategy() and strategy.num_replicas_in_sync == 1
    assert is_chief(strategy)


def test_mirrored_uses_the_two_logical_cpus():
    strategy = get_strategy("mirrored")
    assert isinstance(strategy, tf.distribute.MirroredStrategy)
    assert strategy.num_replicas_in_sync == 2
    assert get_strategy("mirrored") is strategy  # created once per process


def test_bad_names_are_refused(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match="strategy must be one of"):
        get_strategy("tpu")
    with pytest.raises(ValueError, match="TF_CONFIG"):
        get_strategy("multiworker")
    with pytest.raises(ValueError, match="precision must be one of"):
        set_precision("float8")


def test_auto_precision_is_float32_on_cpu(restore_policy):
    assert set_precision("auto") == "float32"
    assert keras.mixed_precision.global_policy().name == "float32"


def test_mirrored_gives_the_default_strategy_loss_on_the_same_global_batch(tmp_path):
    x, y = windows()
    losses = {}
    for name in ("default", "mirrored"):
        config = TrainConfig(epochs=2, batch_size=16, strategy=name, verbose=0)
        model, history = train(small_model, batched(x, y), None, config, tmp_path / name)
        losses[name] = (history["loss"], model.get_weights())
    assert losses["mirrored"][0] == pytest.approx(losses["default"][0], rel=1e-4)
    for a, b in zip(losses["mirrored"][1], losses["default"][1]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_mixed_float16_trains_a_step_and_keeps_float32_outputs(tmp_path, restore_policy):
    x, y = windows(n=16)
    config = TrainConfig(epochs=1, batch_size=16, steps_per_epoch=1, precision="mixed_float16",
                         verbose=0)
    model, history = train(lambda: build_from_preset("tiny"), batched(x, y).repeat(), None,
                           config, tmp_path)
    assert model.get_layer("decoder_block_0").compute_dtype == "float16"
    assert model.output.dtype == "float32"
    assert model(x[:2]).dtype == "float32"
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert np.isfinite(history["loss"][0])


def test_clipping_acts_on_the_gradient_summed_over_replicas(tmp_path):
    # A clip norm far below the gradient's norm clips every step. Keras' own AdamW clips
    # each replica's half-batch gradient before summing; ours must match one device.
    x, y = windows()
    runs = {}
    for name in ("default", "mirrored"):
        config = TrainConfig(epochs=2, batch_size=16, clipnorm=1e-3, strategy=name, verbose=0)
        model, history = train(small_model, batched(x, y), None, config, tmp_path / name)
        runs[name] = model.get_weights()
    for a, b in zip(runs["mirrored"], runs["default"]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
