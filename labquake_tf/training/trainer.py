"""``train``: build a model under the strategy, compile it, fit it with callbacks.

The default and mirrored strategies use ``model.fit`` with Keras' own callbacks.
``model.fit`` fails under MultiWorkerMirroredStrategy in Keras 3
(keras-team/keras#20585), so that strategy goes through ``loop.fit_distributed``,
which reproduces the callbacks' effects over the same model and optimizer.
Two paths, because ``fit`` keeps Keras' tested callbacks where it works.
"""

import pathlib

import keras
import tensorflow as tf

from labquake_tf.files import (BACKUP_FOLDER, HISTORY_FILE, MODEL_FILE, TENSORBOARD_FOLDER,
                               read_history, read_history_rows, write_history)
from labquake_tf.models.layers import conv_impl_plan, resolve_conv_impls
from labquake_tf.training import resume
from labquake_tf.training.artifacts import save_model
from labquake_tf.training.loop import fit_distributed
from labquake_tf.training.optimizer import AdamW
from labquake_tf.training.strategy import get_strategy, set_precision


def make_optimizer(config, steps_per_epoch):
    """AdamW on a cosine schedule that restarts every ``cosine_period`` epochs, clipping
    the global norm of the gradient summed over replicas (see ``optimizer``)."""
    schedule = keras.optimizers.schedules.CosineDecayRestarts(
        config.learning_rate, first_decay_steps=int(config.cosine_period * steps_per_epoch),
        t_mul=1.0, m_mul=1.0)
    return AdamW(
        learning_rate=schedule, weight_decay=config.weight_decay,
        global_clipnorm=config.clipnorm or None)


def compile_model(model, config, steps_per_epoch, extra_metrics=()):
    """MSE loss, RMSE metric (plus ``extra_metrics``); loss scaling is added by Keras
    under mixed_float16. ``config.jit_compile="auto"`` is decided by ``choose_jit_compile``."""
    jit_compile = resolve_jit_compile(config.jit_compile, model_width(model))
    # The fastest conv kernel depends on whether XLA fuses the step.
    resolve_conv_impls(model, jit_compile)
    model.compile(
        optimizer=make_optimizer(config, steps_per_epoch), loss="mse",
        metrics=[keras.metrics.RootMeanSquaredError(name="rmse"), *extra_metrics],
        jit_compile=jit_compile)
    # Built now, not at the first step: weights saved with their optimizer state (backups,
    # KerasTuner checkpoints) then load it instead of "Skipping variable loading".
    model.optimizer.build(model.trainable_variables)
    return model


def execution(blocks, jit_compile, conv_impl="auto", device=None):
    """How this machine runs a TCN's training step, for the run's ``config.json``:
    device type, XLA, and the conv implementation by dilation."""
    device = device or ("GPU" if tf.config.list_physical_devices("GPU") else "CPU")
    return {"device": device, "jit_compile": bool(jit_compile),
            "conv_impl": conv_impl_plan(blocks, device, jit_compile, conv_impl)}


def model_width(model):
    """The widest trainable conv's output channels (what the XLA choice keys on): a frozen
    512-wide decoder under a 64-wide head runs faster without XLA (choose_jit_compile)."""
    return max([getattr(layer, "filters", 0) for layer in model._flatten_layers()
                if layer.trainable] or [0])


def resolve_jit_compile(jit_compile, filters, device=None):
    return choose_jit_compile(filters, device) if jit_compile == "auto" else bool(jit_compile)


XLA_MIN_FILTERS = 512
"""CPU: the width from which the XLA-compiled step (with im2col convs) is measured faster."""


def choose_jit_compile(filters, device=None):
    """Whether to XLA-compile the training step of a TCN ``filters`` wide on ``device``
    ("CPU"/"GPU", default: what is visible).

    CPU: from ``XLA_MIN_FILTERS``. ``benchmarks/bench_train.py`` (float32, 2 shared
    cores; paths and PyTorch in one rotating round-robin; median per-round ratio to
    PyTorch's best thread count, the convs as ``models.layers.choose_conv_impl`` picks
    them, i.e. im2col under XLA; two runs "a/b"): 32 filters (small) eager 1.14/1.34 vs
    XLA 1.19/1.18, a tie within the rounds' spread; 128 filters (medium) 1.27/1.31 vs
    1.04/1.05; 512 filters: paper preset at batch 8 0.90 vs 1.07, at batch 32 1.34 vs
    1.60, finetune-paper at batch 32 1.05 vs 1.04 (a tie), but with its decoder frozen
    0.98/0.97 vs 0.83/0.82, so ``model_width`` counts trainable convs only. Between 128
    and 512 filters not measured.
    An XLA step compiles once per batch shape (a short last batch compiles again).
    GPUs: not measured (no GPU in the session that set this rule); no XLA, cuDNN's
    convs. ``--jit-compile on|off`` overrides.
    """
    if device is None:
        device = "GPU" if tf.config.list_physical_devices("GPU") else "CPU"
    return device == "CPU" and filters >= XLA_MIN_FILTERS


def count_steps(dataset):
    """Batches in one pass; TFRecord datasets do not know their cardinality."""
    n = int(dataset.cardinality())
    if n == tf.data.INFINITE_CARDINALITY:
        raise ValueError("dataset repeats forever: set TrainConfig.steps_per_epoch")
    if n < 0:
        n = int(dataset.reduce(0, lambda count, _: count + 1))
    if n == 0:
        raise ValueError("training dataset is empty")
    return n


RESUME_KEYS = ("batch_size", "learning_rate", "weight_decay", "clipnorm", "cosine_period", "seed")
"""TrainConfig fields a resumed run must share with the run it continues."""


def train(build_fn, train_ds, val_ds, config, out_dir, data_signature=None):
    """Train ``build_fn()`` on batched datasets; returns ``(model, history_dict)``.

    ``out_dir`` receives ``model.keras`` (best epoch), ``history.csv``,
    ``tensorboard/`` and, while running, ``backup/``: a run started again with
    the same ``out_dir`` resumes after the last completed epoch, with the best
    epoch and the early-stopping count it had (``resume``). A backup left by a run
    with another model, other data (``data_signature``, e.g. the manifest's
    sources) or other ``RESUME_KEYS`` is refused with ``resume.ResumeMismatch``.
    """
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    strategy = get_strategy(config.strategy)
    set_precision(config.precision)
    keras.utils.set_random_seed(config.seed)
    steps = config.steps_per_epoch or count_steps(train_ds)
    with strategy.scope():
        model = build_fn()
        compile_model(model, config, steps)
    signature = run_signature(model, train_ds, config, data_signature)
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        history = fit_distributed(model, train_ds, val_ds, config, out_dir, strategy, steps,
                                  signature=signature)
    else:
        history = _fit(model, train_ds, val_ds, config, out_dir, signature)
    return model, history


def run_signature(model, train_ds, config, data_signature=None):
    """What must not change between a killed run and its resumption.

    Weight shapes rather than ``get_config``: layer names carry per-process counters.
    """
    x_spec, y_spec = train_ds.element_spec
    return {"model": [[w.path.split("/")[-1], list(w.shape)] for w in model.weights],
            "data": {"x": list(x_spec.shape[1:]), "y": list(y_spec.shape[1:]),
                     **({"source": data_signature} if data_signature is not None else {})},
            "train": {k: getattr(config, k) for k in RESUME_KEYS}}


def _fit(model, train_ds, val_ds, config, out_dir, signature):
    backup = out_dir / BACKUP_FOLDER
    resume.check_signature(backup, signature)
    done = resume.resumed_epoch(backup)
    # CSVLogger appends, so a resumed run keeps its first epochs; rows past the
    # backup (an epoch logged just before the kill) and a finished run's rows go.
    _truncate_history(out_dir / HISTORY_FILE, done)
    monitor = "val_loss" if val_ds is not None else "loss"
    checkpoint = keras.callbacks.ModelCheckpoint(
        str(out_dir / MODEL_FILE), monitor=monitor, save_best_only=True)
    stopping = keras.callbacks.EarlyStopping(monitor=monitor, patience=config.patience,
                                             restore_best_weights=True)
    callbacks = [
        checkpoint, stopping,
        # Scalars only: writing the graph costs seconds per run.
        keras.callbacks.TensorBoard(str(out_dir / TENSORBOARD_FOLDER), write_graph=False),
        keras.callbacks.CSVLogger(str(out_dir / HISTORY_FILE), append=True),
        keras.callbacks.TerminateOnNaN(),
        # Last: it restores the state the callbacks above reset, and saves what they updated.
        resume.RunBackup(backup, signature, [checkpoint, stopping]),
    ]
    # shuffle=False: datasets come shuffled from the pipeline; Keras cannot shuffle them.
    model.fit(train_ds, validation_data=val_ds, epochs=config.epochs, shuffle=False,
              steps_per_epoch=config.steps_per_epoch, callbacks=callbacks, verbose=config.verbose)
    # EarlyStopping restored the best weights (also across a resume); saving them
    # again makes model.keras hold them whatever the checkpoint last wrote.
    save_model(model, out_dir / MODEL_FILE)
    return read_history(out_dir / HISTORY_FILE)


def _truncate_history(path, epochs):
    rows = read_history_rows(path)
    keep = [r for r in rows if r["epoch"] < epochs]
    if not keep:
        path.unlink(missing_ok=True)
    elif len(keep) < len(rows):
        write_history(path, keep)
