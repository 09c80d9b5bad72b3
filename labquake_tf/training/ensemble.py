"""An ensemble of heads on one frozen decoder, trained on one cached decoder pass.

``add_heads(model, n)`` turns a fine-tune model (input -> input_norm -> decoder
blocks -> head chain -> ``prediction``) into ONE functional model: the same trunk
feeding ``n`` fresh copies of the head (layers ``member{i}_<head layer>``) whose
outputs ``prediction`` averages. It saves, loads, fine-tunes from (``finetune
--from`` reads only ``decoder_block_i``) and exports like any TCN; with ``n == 1``
it is the model itself.

``fit_members`` trains the members one after the other, each with its own seed
(``member_seed``: initialisation and batch order), its own early stopping, on the
decoder's activations computed once (``training.cache``). Members share no
trainable weight, so this is exactly ``n`` independent fine-tunes of the head,
for the price of one decoder pass.

The spread of the members (their standard deviation per window) feeds the
normalized conformal score of ``evaluation.intervals``; ``predict_members`` returns
every member's scaled output for it.
"""

import dataclasses
import pathlib

import keras
import numpy as np

from labquake_tf.errors import UsageError
from labquake_tf.files import HISTORY_FILE, TENSORBOARD_FOLDER
from labquake_tf.models import decoder_blocks, is_streamable
from labquake_tf.training import cache
from labquake_tf.training.finetune import batches
from labquake_tf.training.strategy import get_strategy
from labquake_tf.training.trainer import compile_model, count_steps

DEFAULT_MEMBERS = 5
"""Five heads. On p4581 shear stress (seed 0) the validation RMSE of the mean of the
first k members was 0.0360, 0.0327, 0.0333, 0.0333, 0.0332 MPa for k = 1..5: most of
the gain comes from the first few heads, the cost grows linearly (each head trains
in seconds on the cached decoder), and five members give the normalized interval
score a spread estimated from five values rather than two or three."""

SEED_STRIDE = 1000
"""Member i of a run with ``--seed s`` trains with seed ``s + 1000 i``: member 0 is the
single fine-tune of seed s, and runs with seeds 0..999 share no member."""


def check_members(n):
    """``n`` as a positive int, or ValueError naming ``--ensemble``."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise UsageError(f"--ensemble must be a positive number of heads, got {n!r}")
    return int(n)


def member_seed(seed, i):
    return int(seed) + SEED_STRIDE * int(i)


def _head_layers(model):
    # Where training.cache splits: a streamable model's trunk ends after history_crop.
    last = model.get_layer("history_crop") if is_streamable(model) else decoder_blocks(model)[-1]
    # The head is a chain; functional models list their layers in call order.
    return last, model.layers[model.layers.index(last) + 1:]


def add_heads(model, n, seed=0):
    """``model``'s trunk with ``n`` freshly initialised copies of its head, averaged."""
    n = check_members(n)
    if n == 1:
        return model
    last, head = _head_layers(model)
    outputs = []
    for i in range(n):
        keras.utils.set_random_seed(member_seed(seed, i))
        x = last.output
        for layer in head:
            x = layer.__class__.from_config({**layer.get_config(),
                                             "name": f"member{i}_{layer.name}"})(x)
        outputs.append(x)
    mean = keras.layers.Average(name="prediction", dtype="float32")(outputs)
    return keras.Model(model.inputs, mean, name=model.name)


def member_outputs(model):
    """The members' output tensors (``[model.output]`` for a single head)."""
    names = {layer.name for layer in model.layers}
    outs = []
    while f"member{len(outs)}_prediction" in names:
        outs.append(model.get_layer(f"member{len(outs)}_prediction").output)
    return outs or [model.outputs[0]]


def n_members(model):
    return len(member_outputs(model))


def members_model(model):
    """``x -> [mean, member_0, ..., member_{n-1}]``, sharing ``model``'s layers."""
    return keras.Model(model.inputs, [model.outputs[0], *member_outputs(model)],
                       name=f"{model.name}_members")


def predict_members(model, x, batch_size=512):
    """``(mean, members)``: ``(n, n_targets)`` and ``(n_members, n, n_targets)``, scaled."""
    out = members_model(model).predict(x, batch_size=batch_size, verbose=0)
    return np.asarray(out[0], np.float64), np.stack([np.asarray(o, np.float64) for o in out[1:]])


def fit_members(model, train_xy, val_xy, config, out_dir, use_cache=True):
    """Train every member's head (``fit_head``); returns one history dict per member.

    Member 0 writes its ``history.csv`` into ``out_dir``, member i > 0 into
    ``out_dir/members/i/``. ``model`` ends up trained (the members' layers are its
    layers).
    """
    (x_train, y_train), (x_val, y_val) = train_xy, val_xy
    outs = member_outputs(model)
    if len(outs) > 1 and not use_cache:
        # Members share the trunk: training it with one member would change the others'.
        cache.check_cacheable(model)
    if use_cache:
        cache.check_cacheable(model)
        trunk, _ = cache.split_at_head(keras.Model(model.inputs, outs[0]))
        x_train = cache.decoder_activations(trunk, x_train, config.batch_size)
        x_val = cache.decoder_activations(trunk, x_val, config.batch_size)
    val_ds = batches(x_val, y_val, config.batch_size)
    histories = []
    for i, out in enumerate(outs):
        member = keras.Model(model.inputs, out, name=f"{model.name}_member{i}")
        target = cache.split_at_head(member)[1] if use_cache else member
        member_config = dataclasses.replace(config, seed=member_seed(config.seed, i))
        keras.utils.set_random_seed(member_config.seed)
        train_ds = batches(x_train, y_train, config.batch_size, shuffle=True,
                           seed=member_config.seed)
        member_dir = out_dir if i == 0 else out_dir / "members" / str(i)
        histories.append(fit_head(target, train_ds, val_ds, member_config, member_dir))
    return histories


def fit_head(model, train_ds, val_ds, config, out_dir=None):
    """Compile and fit ``model`` (AdamW on the cosine schedule, MSE, as ``trainer.train``),
    stop early on ``val_loss`` with the best weights restored; returns the history dict.

    No per-epoch checkpoint or backup: a head trains in seconds, and saving one
    ``.keras`` file per epoch cost more than the training itself on 2 cores (ten
    heads per fine-tune: the ensemble and its calibration twin). ``out_dir`` gets
    ``history.csv`` and ``tensorboard/``.
    """
    with get_strategy(config.strategy).scope():
        compile_model(model, config, config.steps_per_epoch or count_steps(train_ds))
    callbacks = [keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.patience,
                                               restore_best_weights=True),
                 keras.callbacks.TerminateOnNaN()]
    if out_dir is not None:
        pathlib.Path(out_dir).mkdir(parents=True, exist_ok=True)
        callbacks += [keras.callbacks.CSVLogger(str(pathlib.Path(out_dir) / HISTORY_FILE)),
                      # scalars only: writing the graph costs seconds per head
                      keras.callbacks.TensorBoard(str(pathlib.Path(out_dir) / TENSORBOARD_FOLDER),
                                                  write_graph=False)]
    history = model.fit(train_ds, validation_data=val_ds, epochs=config.epochs, shuffle=False,
                        steps_per_epoch=config.steps_per_epoch, callbacks=callbacks,
                        verbose=config.verbose)
    return {k: [float(v) for v in vals] for k, vals in history.history.items()}
