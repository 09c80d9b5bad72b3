"""Fine-tuning's model: the first K decoder blocks of a pretrained TCN, a fresh head
(the ``labquake finetune`` job is ``jobs.finetune``).

The fine-tuned model is ``build_tcn(seq_len=N, blocks=K)`` with the pretrained
model's filters, kernel and features; its ``decoder_block_0..K-1`` receive the
pretrained blocks' weights (``--decoder pretrained-frozen``, the paper's
transfer), keep their random initialisation (``random-frozen``, the ablation
that asks whether the pretrained weights matter) or train too (``trainable``).
The head is always fresh, so the target may be one the pretrained model never
saw.

A frozen decoder is an exact, fixed function (so the activation cache in
``training.cache`` is valid): a frozen ``TCNBlock`` runs in inference mode, without
its dropout, and ``input_norm`` is frozen with the decoder (left trainable, it
would shift the frozen decoder's inputs at every step).

``input_norm`` (BatchNorm over time: one gamma, beta, moving mean and variance per
time step of the window) is the pretrained one whenever it can be:

* same window length: gamma, beta and moving statistics are copied, so the frozen
  decoder sees its inputs on exactly the scale it was trained on (re-fitting them,
  as earlier versions did, dropped gamma/beta and re-centred the inputs);
* shorter window (N < L steps): ``last-steps``, the pretrained parameters of the
  LAST N steps (the steps nearest the predicted one, which a causal window keeps);
* longer window: nothing to copy for the extra steps, so the statistics are
  re-fitted from the fine-tuning training windows (``refit``: gamma 1, beta 0).

Measured on p4581 shear stress (5:1:4, from the main job's small-preset export,
30 epochs, seeds 0 and 1, validation RMSE, loaded 2-core machine): at the same
64 steps ``copy`` 0.0272/0.0287 MPa against ``refit`` 0.0350/0.0348; for a 16-step
window ``last-steps`` 0.0540/0.0583 against ``refit`` 0.0566/0.0566, a tie within
the seed spread, so the pretrained parameters are kept there too.
``input_norm="refit"`` (``--input-norm refit``) keeps the other choice at hand.
``random-frozen`` (the ablation) always re-fits: its blocks never saw the
pretrained scale.
"""

import keras
import numpy as np
import tensorflow as tf

from labquake_tf.errors import UsageError
from labquake_tf.models import build_tcn, decoder_blocks, is_streamable
from labquake_tf.training import cache
from labquake_tf.training.trainer import train

DECODER_MODES = ("pretrained-frozen", "random-frozen", "trainable")


def architecture(model):
    """The ``build_tcn`` kwargs a fine-tuned model inherits from a pretrained TCN."""
    block = model.get_layer("decoder_block_0")
    return dict(n_features=int(model.input_shape[-1]), filters=block.filters,
                kernel_size=block.kernel_size, dropout=block.dropout,
                norm_epsilon=float(model.get_layer("input_norm").epsilon),
                streamable=is_streamable(model))


INPUT_NORM_MODES = ("auto", "copy", "last-steps", "adapt", "refit")
"""auto: copy at the same window length, last-steps when shorter, refit when longer."""


def build_finetune_model(pretrained, seq_len, blocks, n_targets=1, decoder="pretrained-frozen",
                         input_norm="auto"):
    """A fresh TCN whose first ``blocks`` decoder blocks come from ``pretrained``.

    ``input_norm`` is carried over as ``transfer_input_norm`` says; the model's
    ``input_norm_source`` attribute tells which (``"refit"``: the caller must set
    the statistics, ``adapt_input_norm``).
    """
    if decoder not in DECODER_MODES:
        raise ValueError(f"decoder must be one of {DECODER_MODES}, got {decoder!r}")
    available = len(decoder_blocks(pretrained))
    if not 1 <= blocks <= available:
        raise UsageError(f"blocks must be between 1 and {available} (the pretrained model's "
                         f"decoder blocks; --blocks), got {blocks}")
    arch = architecture(pretrained)
    frozen = decoder != "trainable"
    model = build_tcn(seq_len, n_targets=n_targets, blocks=blocks, name="tcn_finetune", **arch)
    if decoder != "random-frozen":
        for new, old in zip(decoder_blocks(model), decoder_blocks(pretrained)):
            new.set_weights(old.get_weights())
    model.input_norm_source = transfer_input_norm(
        model, pretrained, "refit" if decoder == "random-frozen" else input_norm)
    for block in decoder_blocks(model):
        block.trainable = not frozen
    model.get_layer("input_norm").trainable = not frozen
    return model


def transfer_input_norm(model, pretrained, mode="auto"):
    """Set ``model``'s input_norm from ``pretrained``'s; returns what was done
    (``"copy"``, ``"last-steps"`` or ``"refit"``: left for ``adapt_input_norm``)."""
    if mode not in INPUT_NORM_MODES:
        raise ValueError(f"input_norm must be one of {INPUT_NORM_MODES}, got {mode!r}")
    new, old = model.get_layer("input_norm"), pretrained.get_layer("input_norm")
    n, length = int(model.input_shape[1]), int(pretrained.input_shape[1])
    if new.axis != old.axis:
        raise ValueError(f"input_norm normalises over axis {new.axis} in the new model, "
                         f"{old.axis} in the pretrained one")
    axis = new.axis if isinstance(new.axis, int) else new.axis[0]
    if axis % 3 == 2:
        # per feature (the streamable variant): the window length does not enter
        mode = "copy" if mode in ("auto", "copy", "last-steps") else mode
        if mode == "copy":
            new.set_weights(old.get_weights())
        elif mode == "adapt":
            new.set_weights(old.get_weights()[:2] + [w.numpy() for w in new.weights[2:]])
        return mode
    if mode == "auto":
        mode = "copy" if n == length else "last-steps" if n < length else "refit"
    if mode == "refit":
        return mode
    if mode == "copy" and n != length:
        raise ValueError(f"input_norm='copy' needs the pretrained window length {length}, "
                         f"got seq_len={n}")
    if n > length:
        raise ValueError(f"input_norm={mode!r}: the {n}-step window is longer than the "
                         f"pretrained {length} steps; use 'refit'")
    # gamma, beta, moving_mean, moving_variance: one value per time step
    weights = [w[length - n:] for w in old.get_weights()]
    if mode == "adapt":  # the pretrained gamma/beta; statistics left for adapt_input_norm
        weights[2:] = [w.numpy() for w in new.weights[2:]]
    new.set_weights(weights)
    return mode


def adapt_input_norm(model, windows):
    """Set ``input_norm``'s moving statistics (per step, or per feature in the streamable
    variant) from training windows."""
    norm = model.get_layer("input_norm")
    windows = np.asarray(windows, np.float64)
    axis = norm.axis if isinstance(norm.axis, int) else norm.axis[0]
    others = tuple(a for a in range(windows.ndim) if a != axis % windows.ndim)
    norm.moving_mean.assign(windows.mean(axis=others).astype("float32"))
    norm.moving_variance.assign(windows.var(axis=others).astype("float32"))


def trainable_fraction(model):
    """Share of the model's parameters that training updates (paper: 3.3 %)."""
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    return trainable / model.count_params()


def batches(inputs, y, batch_size, shuffle=False, seed=0):
    """In-memory ``(inputs, y)`` batches; one order for both plain and cached paths."""
    ds = tf.data.Dataset.from_tensor_slices((inputs, y))
    if shuffle:
        ds = ds.shuffle(len(y), seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def fit(model, train_xy, val_xy, config, out_dir, use_cache=True):
    """Train ``model``'s trainable part on in-memory windows; returns the history.

    With ``use_cache`` the frozen decoder runs once over all windows and only
    the head trains (see ``training.cache``); ``model`` ends up trained either way.
    """
    keras.utils.set_random_seed(config.seed)
    (x_train, y_train), (x_val, y_val) = train_xy, val_xy
    target = model
    if use_cache:
        cache.check_cacheable(model)
        trunk, target = cache.split_at_head(model)
        x_train = cache.decoder_activations(trunk, x_train, config.batch_size)
        x_val = cache.decoder_activations(trunk, x_val, config.batch_size)
    train_ds = batches(x_train, y_train, config.batch_size, shuffle=True, seed=config.seed)
    val_ds = batches(x_val, y_val, config.batch_size)
    _, history = train(lambda: target, train_ds, val_ds, config, out_dir)
    return history
