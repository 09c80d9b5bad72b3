"""The custom loop (MultiWorkerMirroredStrategy's path), run in-process on the default
strategy: same optimizer, backup/resume, early stopping and history as ``fit``."""

import csv

import keras
import numpy as np
import pytest
import tensorflow as tf

from labquake_tf.training import TrainConfig, compile_model
from labquake_tf.training.loop import fit_distributed
from test_training_trainer import batched, small_model, windows


def _compiled(config, steps):
    keras.utils.set_random_seed(0)
    return compile_model(small_model(), config, steps)


def test_loop_trains_writes_history_and_model(tmp_path):
    x, y = windows()
    config = TrainConfig(epochs=3, batch_size=16, learning_rate=1e-2, verbose=0)
    model = _compiled(config, 4)
    history = fit_distributed(model, batched(x, y), batched(x, y), config, tmp_path,
                              tf.distribute.get_strategy(), 4)
    assert history["epoch"] == [0, 1, 2]
    assert history["loss"][-1] < history["loss"][0]
    assert history["rmse"][0] == pytest.approx(np.sqrt(history["loss"][0]))
    assert int(model.optimizer.iterations) == 12
    assert (tmp_path / "model.keras").exists() and not (tmp_path / "backup").exists()
    # Validation loss is the exact MSE over the whole split (eval mode).
    val = float(np.mean((model.predict(x, verbose=0) - y) ** 2))
    assert min(history["val_loss"]) == pytest.approx(val, rel=1e-4)


def test_loop_resumes_after_a_kill(tmp_path):
    x, y = windows()
    config = TrainConfig(epochs=3, batch_size=16, verbose=0)
    calls = {"n": 0}

    def die_in_epoch_2(x, y):
        calls["n"] += 1
        if calls["n"] > 10:  # epoch 1 = batches 1-4, epoch 2 = 5-8 (+ prefetch), then dies
            raise RuntimeError("killed")
        return x, y

    dying = batched(x, y).map(lambda a, b: tf.py_function(die_in_epoch_2, [a, b], [tf.float32] * 2))
    dying = dying.map(lambda a, b: (tf.ensure_shape(a, [None, 16, 1]), tf.ensure_shape(b, [None, 1])))
    with pytest.raises(Exception, match="killed"):
        fit_distributed(_compiled(config, 4), dying, None, config, tmp_path,
                        tf.distribute.get_strategy(), 4)
    with open(tmp_path / "history.csv") as f:
        done = [int(r["epoch"]) for r in csv.DictReader(f)]
    assert done and done == list(range(len(done))) and len(done) < 3

    model = _compiled(config, 4)
    history = fit_distributed(model, batched(x, y), None, config, tmp_path,
                              tf.distribute.get_strategy(), 4)
    assert history["epoch"] == [0, 1, 2]
    assert int(model.optimizer.iterations) == 12  # restored step count, then the rest


def test_loop_stops_early_and_restores_the_best_weights(tmp_path):
    x, y = windows()
    config = TrainConfig(epochs=20, batch_size=16, learning_rate=1e-2, patience=1, verbose=0)
    model = _compiled(config, 4)
    history = fit_distributed(model, batched(x, y), batched(x, 1 - y), config, tmp_path,
                              tf.distribute.get_strategy(), 4)
    assert len(history["epoch"]) < 20
    val = float(np.mean((model.predict(x, verbose=0) - (1 - y)) ** 2))
    assert val == pytest.approx(min(history["val_loss"]), rel=1e-4)


def test_loop_killed_after_its_best_epoch_resumes_to_the_uninterrupted_result(tmp_path,
                                                                             monkeypatch):
    from labquake_tf.training import loop

    x, y = windows()
    config = TrainConfig(epochs=20, batch_size=16, learning_rate=1e-2, patience=2, verbose=0)
    strategy = tf.distribute.get_strategy()

    def run(out):
        return fit_distributed(_compiled(config, 4), batched(x, y), batched(x, 1 - y), config,
                               out, strategy, 4, signature={"model": "small"})

    whole = run(tmp_path / "whole")
    best = int(np.argmin(whole["val_loss"]))
    assert len(whole["epoch"]) == best + 3 < 20

    write = loop._write_history

    def write_then_die(path, history):
        write(path, history)
        if len(history) == best + 2:  # epoch best+1 logged (worse), its backup not yet written
            raise RuntimeError("killed")

    monkeypatch.setattr(loop, "_write_history", write_then_die)
    with pytest.raises(RuntimeError, match="killed"):
        run(tmp_path / "killed")
    monkeypatch.setattr(loop, "_write_history", write)
    resumed = run(tmp_path / "killed")

    assert resumed["epoch"] == whole["epoch"]
    np.testing.assert_allclose(resumed["val_loss"], whole["val_loss"], rtol=1e-5)
    for a, b in zip(keras.models.load_model(tmp_path / "killed" / "model.keras").get_weights(),
                    keras.models.load_model(tmp_path / "whole" / "model.keras").get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_loop_refuses_a_backup_of_another_run(tmp_path, monkeypatch):
    from labquake_tf.training import loop
    from labquake_tf.training.resume import ResumeMismatch

    x, y = windows()
    config = TrainConfig(epochs=3, batch_size=16, verbose=0)
    write = loop._write_history

    def write_then_die(path, history):
        write(path, history)
        if len(history) == 2:  # epoch 0 is backed up, epoch 1 is not
            raise RuntimeError("killed")

    def run(signature):
        return fit_distributed(_compiled(config, 4), batched(x, y), None, config, tmp_path,
                               tf.distribute.get_strategy(), 4, signature=signature)

    monkeypatch.setattr(loop, "_write_history", write_then_die)
    with pytest.raises(RuntimeError, match="killed"):
        run({"data": "p4581"})
    monkeypatch.setattr(loop, "_write_history", write)
    with pytest.raises(ResumeMismatch, match="data"):
        run({"data": "p5198"})
    assert run({"data": "p4581"})["epoch"] == [0, 1, 2]
