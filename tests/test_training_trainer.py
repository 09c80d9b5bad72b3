import csv

import keras
import numpy as np
import pytest
import tensorflow as tf

from labquake_tf.models import PRESETS, build_from_preset, decoder_blocks
from labquake_tf.training import TrainConfig, train


def windows(n=64, seq_len=16, seed=0):
    """Windows whose target is the mean of their last 4 steps: learnable by a TCN."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(size=(n, seq_len, 1)).astype("float32")
    return x, x[:, -4:, 0].mean(axis=1, keepdims=True)


def batched(x, y, batch=16):
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch)


def small_model(seq_len=16):
    """A model that traces in a second; the TCN is used where it matters."""
    inputs = keras.Input((seq_len, 1))
    h = keras.layers.Conv1D(4, 3, activation="relu")(inputs)
    return keras.Model(inputs, keras.layers.Dense(1)(keras.layers.Flatten()(h)))


def test_overfits_a_tiny_set_to_near_zero_loss(tmp_path):
    x, y = windows(n=32)
    config = TrainConfig(epochs=3, batch_size=16, learning_rate=3e-3, weight_decay=0.0,
                         steps_per_epoch=40, verbose=0)
    _, history = train(lambda: build_from_preset("tiny"), batched(x, y).repeat(), None, config,
                       tmp_path)
    assert history["epoch"] == [0, 1, 2]
    assert history["loss"][-1] < 0.01 * np.var(y)
    for name in ("model.keras", "history.csv", "tensorboard"):
        assert (tmp_path / name).exists(), name
    assert not (tmp_path / "backup").exists()  # RunBackup removes it once training ends


class _Kill(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        if epoch == 2:
            raise RuntimeError("killed")


def test_killed_run_resumes_from_backup_with_the_same_total_epochs(tmp_path, monkeypatch):
    x, y = windows()
    config = TrainConfig(epochs=4, batch_size=16, verbose=0)
    fit = keras.Model.fit

    def fit_then_die(self, *args, callbacks=(), **kwargs):
        return fit(self, *args, callbacks=[*callbacks, _Kill()], **kwargs)

    monkeypatch.setattr(keras.Model, "fit", fit_then_die)
    with pytest.raises(RuntimeError, match="killed"):
        train(small_model, batched(x, y), batched(x, y), config, tmp_path)
    with open(tmp_path / "history.csv") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [0, 1]
    assert (tmp_path / "backup").is_dir()

    monkeypatch.setattr(keras.Model, "fit", fit)
    model, history = train(small_model, batched(x, y), batched(x, y), config, tmp_path)
    assert history["epoch"] == [0, 1, 2, 3]
    assert len(history["val_loss"]) == 4
    # Resumed from epoch 2, not from scratch: the optimizer restarted at step 2 x 4 batches.
    assert int(model.optimizer.iterations) == 2 * 4 + 2 * 4


def test_early_stopping_restores_and_saves_the_best_epoch(tmp_path):
    x, y = windows()
    # Validation targets anti-correlated with training ones: fitting one spoils the other.
    config = TrainConfig(epochs=20, batch_size=16, learning_rate=1e-2, patience=1, verbose=0)
    model, history = train(small_model, batched(x, y), batched(x, 1 - y), config, tmp_path)
    assert len(history["val_loss"]) < 20
    best = min(history["val_loss"])
    assert model.evaluate(batched(x, 1 - y), verbose=0)[0] == pytest.approx(best, rel=1e-4)
    saved = keras.models.load_model(tmp_path / "model.keras")
    assert saved.evaluate(batched(x, 1 - y), verbose=0)[0] == pytest.approx(best, rel=1e-4)


def test_a_fresh_run_does_not_extend_an_old_history(tmp_path):
    x, y = windows(n=16)
    config = TrainConfig(epochs=1, batch_size=16, verbose=0)
    train(small_model, batched(x, y), None, config, tmp_path)
    _, history = train(small_model, batched(x, y), None, config, tmp_path)
    assert history["epoch"] == [0]


def test_endless_dataset_without_steps_per_epoch_is_refused(tmp_path):
    x, y = windows(n=16)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        train(small_model, batched(x, y).repeat(), None, TrainConfig(verbose=0), tmp_path)


def _weights_of(path):
    return keras.models.load_model(path, compile=False).get_weights()


def test_a_run_killed_after_its_best_epoch_resumes_to_the_uninterrupted_result(tmp_path,
                                                                               monkeypatch):
    # Validation targets anti-correlated with training ones: the best epoch comes early,
    # then patience runs out. Killed after the best epoch and one worse one, the resumed
    # run must still know the best (value, weights) and the wait count.
    x, y = windows()
    config = TrainConfig(epochs=20, batch_size=16, learning_rate=1e-2, patience=2, verbose=0)
    _, whole = train(small_model, batched(x, y), batched(x, 1 - y), config, tmp_path / "whole")
    best = int(np.argmin(whole["val_loss"]))
    stop = len(whole["epoch"])
    assert stop == best + 3 < 20  # stopped by patience, so the kill below lands before it

    fit = keras.Model.fit

    class Kill(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == best + 2:
                raise RuntimeError("killed")

    monkeypatch.setattr(keras.Model, "fit", lambda self, *a, callbacks=(), **k:
                        fit(self, *a, callbacks=[*callbacks, Kill()], **k))
    with pytest.raises(RuntimeError, match="killed"):
        train(small_model, batched(x, y), batched(x, 1 - y), config, tmp_path / "killed")
    monkeypatch.setattr(keras.Model, "fit", fit)
    _, resumed = train(small_model, batched(x, y), batched(x, 1 - y), config, tmp_path / "killed")

    assert resumed["epoch"] == whole["epoch"]
    np.testing.assert_allclose(resumed["val_loss"], whole["val_loss"], rtol=1e-5)
    for a, b in zip(_weights_of(tmp_path / "killed" / "model.keras"),
                    _weights_of(tmp_path / "whole" / "model.keras")):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_resuming_with_another_model_or_data_is_refused(tmp_path, monkeypatch):
    from labquake_tf.training.resume import ResumeMismatch

    x, y = windows()
    config = TrainConfig(epochs=3, batch_size=16, verbose=0)
    fit = keras.Model.fit
    monkeypatch.setattr(keras.Model, "fit", lambda self, *a, callbacks=(), **k:
                        fit(self, *a, callbacks=[*callbacks, _Kill()], **k))
    with pytest.raises(RuntimeError, match="killed"):
        train(small_model, batched(x, y), None, config, tmp_path, data_signature="p4581")
    monkeypatch.setattr(keras.Model, "fit", fit)
    with pytest.raises(ResumeMismatch, match="model"):
        train(lambda: build_from_preset("tiny"), batched(x, y), None, config, tmp_path,
              data_signature="p4581")
    with pytest.raises(ResumeMismatch, match="data"):
        train(small_model, batched(x, y), None, config, tmp_path, data_signature="p5198")
    assert (tmp_path / "backup").is_dir()  # the refused runs left it as it was


def test_compile_fixes_the_conv_implementation_and_the_xla_choice():
    from labquake_tf.training import compile_model

    # CPU, by width (bench_train.py): XLA from 512 filters, its dilated convs as im2col.
    wide = build_from_preset("tiny", filters=512, kernel_size=8, blocks=2)
    compile_model(wide, TrainConfig(jit_compile="auto"), steps_per_epoch=1)
    assert wide.jit_compile is True
    convs = [wide.get_layer("decoder_block_1").conv1, wide.get_layer("decoder_block_0").conv1]
    assert [c.resolved_impl for c in convs] == ["im2col", "conv"]  # dilation 2 vs 1
    # A frozen wide decoder under a narrow head: measured faster without XLA.
    frozen = build_from_preset("tiny", filters=512, kernel_size=8, blocks=2)
    for block in decoder_blocks(frozen):
        block.trainable = False
    compile_model(frozen, TrainConfig(jit_compile="auto"), steps_per_epoch=1)
    assert frozen.jit_compile is False
    narrow = compile_model(build_from_preset("tiny"), TrainConfig(jit_compile="auto"),
                           steps_per_epoch=1)
    assert narrow.jit_compile is False
    assert {layer.resolved_impl for layer in narrow._flatten_layers()
            if hasattr(layer, "resolved_impl")} == {"conv"}
    forced = compile_model(small_model(), TrainConfig(jit_compile="on"), steps_per_epoch=1)
    assert forced.jit_compile is True


@pytest.mark.parametrize("jit", ["on", "off"])
def test_conv_impl_plan_is_what_compile_fixes(jit):
    # The plan a run's config records before building is what compile_model then fixes.
    from labquake_tf.models.layers import WeightNormConv1D, conv_impl_plan
    from labquake_tf.training import compile_model

    model = compile_model(build_from_preset("tiny"), TrainConfig(jit_compile=jit),
                          steps_per_epoch=1)
    fixed = {str(layer.dilation_rate): layer.resolved_impl for layer in model._flatten_layers()
             if isinstance(layer, WeightNormConv1D)}
    plan = conv_impl_plan(PRESETS["tiny"]["blocks"], "CPU", xla=model.jit_compile)
    assert plan == fixed == ({"1": "conv", "2": "im2col", "4": "im2col"} if jit == "on"
                             else {"1": "conv", "2": "conv", "4": "conv"})
