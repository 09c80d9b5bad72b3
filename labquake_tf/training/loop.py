"""A training loop of our own, for MultiWorkerMirroredStrategy.

Keras 3's ``model.fit`` fails under MultiWorkerMirroredStrategy
(keras-team/keras#20585), so this loop runs the compiled model's optimizer
(AdamW, cosine schedule, clipping, loss scaling) with ``strategy.run`` and
reproduces what ``train``'s callbacks do with ``fit``: backup and resume
(``tf.train.CheckpointManager``), best ``model.keras``, early stopping with
best weights restored, ``history.csv``, TensorBoard scalars, stop on NaN.
Only the chief writes the run directory.
"""

import json
import math
import shutil

import keras
import numpy as np
import tensorflow as tf

from labquake_tf.files import (BACKUP_FOLDER, HISTORY_FILE, MODEL_FILE, TENSORBOARD_FOLDER,
                               read_history, read_history_rows)
from labquake_tf.files import write_history as _write_history
from labquake_tf.training.artifacts import save_model
from labquake_tf.training.resume import ResumeMismatch
from labquake_tf.training.strategy import is_chief


def fit_distributed(model, train_ds, val_ds, config, out_dir, strategy, steps_per_epoch,
                    signature=None):
    """Train ``model`` (compiled) for ``config.epochs``; returns the history as columns.

    The backup holds the early-stopping state (best value, wait count, best
    weights) with the weights and optimizer, so a resumed run stops, and saves,
    as the uninterrupted one would. ``signature`` (``trainer.run_signature``) is
    stored with it; a backup with another one is refused.
    """
    chief = is_chief(strategy)
    optimizer = model.optimizer
    train_step, eval_step = _steps(model, optimizer, strategy)
    # Endless iterators taken a known number of steps: ending a distributed
    # iteration makes the workers agree on end-of-data, which costs seconds.
    train_batches = _batches(train_ds, strategy)
    if val_ds is not None:
        val_steps = int(val_ds.cardinality())
        if val_steps < 1:
            raise ValueError("validation dataset: unknown or infinite length (make it with "
                             "pipeline.make_dataset, which knows it)")
        val_batches = _batches(val_ds, strategy)

    with strategy.scope():
        epoch_var = tf.Variable(0, dtype=tf.int64, trainable=False)
        best_var = tf.Variable(math.inf, dtype=tf.float64, trainable=False)
        wait_var = tf.Variable(0, dtype=tf.int64, trainable=False)
        best_weights = [tf.Variable(w, trainable=False) for w in model.get_weights()]
    # Every worker saves (saving may need collectives); only the chief's copy is kept.
    backup_dir = (out_dir / BACKUP_FOLDER if chief
                  else out_dir / f".backup-worker{_task_id(strategy)}")
    manager = tf.train.CheckpointManager(
        tf.train.Checkpoint(model=model, optimizer=optimizer, epoch=epoch_var, best=best_var,
                            wait=wait_var, best_weights=best_weights),
        str(backup_dir), max_to_keep=1)
    if manager.latest_checkpoint:
        _check_signature(backup_dir, signature)
        manager.checkpoint.restore(manager.latest_checkpoint)
    elif signature is not None:
        backup_dir.mkdir(parents=True, exist_ok=True)
        (backup_dir / "signature.json").write_text(json.dumps(signature, sort_keys=True, default=str))
    start = int(epoch_var.numpy())
    history = read_history_rows(out_dir / HISTORY_FILE, before_epoch=start) if start else []

    monitor = "val_loss" if val_ds is not None else "loss"
    best, wait = float(best_var.numpy()), int(wait_var.numpy())
    writer = tf.summary.create_file_writer(str(out_dir / TENSORBOARD_FOLDER)) if chief else None
    for epoch in range(start, config.epochs):
        if config.verbose and chief:
            print(f"Epoch {epoch + 1}/{config.epochs}")
        bar = keras.utils.Progbar(steps_per_epoch, verbose=config.verbose if chief else 0)
        sums = np.zeros(2)
        for step in range(steps_per_epoch):
            sums += train_step(*next(train_batches)).numpy()
            bar.update(step + 1, [("loss", sums[0] / sums[1])])
        logs = {"loss": sums[0] / sums[1], "rmse": math.sqrt(sums[0] / sums[1])}
        if val_ds is not None:
            val = sum(eval_step(*next(val_batches)).numpy() for _ in range(val_steps))
            logs.update(val_loss=val[0] / val[1], val_rmse=math.sqrt(val[0] / val[1]))
        logs = {k: float(v) for k, v in logs.items()}
        logs["learning_rate"] = float(keras.ops.convert_to_numpy(optimizer.learning_rate))
        if config.verbose and chief:
            print(" - ".join(f"{k}: {v:.4g}" for k, v in logs.items()))
        if not np.isfinite(logs["loss"]):
            print(f"Epoch {epoch + 1}: invalid loss, terminating training")
            break
        history.append({"epoch": epoch, **logs})

        improved = logs[monitor] < best
        if improved:
            best, wait = logs[monitor], 0
            for var, value in zip(best_weights, model.get_weights()):
                var.assign(value)
        else:
            wait += 1
        if chief:
            if improved:
                save_model(model, out_dir / MODEL_FILE)
            _write_history(out_dir / HISTORY_FILE, history)
            with writer.as_default(step=epoch):
                for key, value in logs.items():
                    tf.summary.scalar(key, value)
        # The backup last: killed before it, the resumed run redoes this epoch and
        # drops its history row; killed after, nothing of this epoch is missing.
        epoch_var.assign(epoch + 1)
        best_var.assign(best)
        wait_var.assign(wait)
        manager.save()
        if wait >= config.patience:
            if chief and config.verbose:
                print(f"Epoch {epoch + 1}: early stopping")
            break

    if math.isfinite(best):
        model.set_weights([w.numpy() for w in best_weights])
    if chief:
        save_model(model, out_dir / MODEL_FILE)
    shutil.rmtree(backup_dir, ignore_errors=True)
    return read_history(out_dir / HISTORY_FILE) if chief else _columns(history)


def _steps(model, optimizer, strategy):
    scale_loss = getattr(optimizer, "scale_loss", lambda loss: loss)

    def squared_error(x, y, training):
        pred = model(x, training=training)
        err = tf.reduce_mean(tf.square(tf.cast(y, tf.float32) - tf.cast(pred, tf.float32)), axis=-1)
        return err, tf.stack([tf.reduce_sum(err), tf.cast(tf.size(err), tf.float32)])

    def replica_train(x, y):
        with tf.GradientTape() as tape:
            err, sums = squared_error(x, y, True)
            # Mean over the GLOBAL batch: the optimizer sums gradients over replicas.
            loss = tf.nn.compute_average_loss(err)
            if model.losses:
                loss += tf.nn.scale_regularization_loss(tf.add_n(model.losses))
            scaled = scale_loss(loss)
        grads = tape.gradient(scaled, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return sums

    def replica_eval(x, y):
        return squared_error(x, y, False)[1]

    @tf.function(reduce_retracing=True)
    def train_step(x, y):
        return strategy.reduce("SUM", strategy.run(replica_train, args=(x, y)), axis=None)

    @tf.function(reduce_retracing=True)
    def eval_step(x, y):
        return strategy.reduce("SUM", strategy.run(replica_eval, args=(x, y)), axis=None)

    return train_step, eval_step


def _batches(dataset, strategy):
    # Shard by element: FILE sharding fails when a split has fewer shards than workers.
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return iter(strategy.experimental_distribute_dataset(dataset.repeat().with_options(options)))


def _check_signature(backup_dir, signature):
    path = backup_dir / "signature.json"
    if signature is None or not path.exists():
        return
    saved = json.loads(path.read_text())
    ours = json.loads(json.dumps(signature, sort_keys=True, default=str))
    if saved != ours:
        differs = sorted(k for k in set(saved) | set(ours) if saved.get(k) != ours.get(k))
        raise ResumeMismatch(
            f"{backup_dir}: the interrupted run there used another {', '.join(differs)}; "
            "resume it with the same settings, or delete that run dir / choose another --out")


def _task_id(strategy):
    resolver = strategy.cluster_resolver
    return f"{resolver.task_type}{resolver.task_id}"


def _columns(history):
    return {key: [row[key] for row in history] for key in history[0]} if history else {}
