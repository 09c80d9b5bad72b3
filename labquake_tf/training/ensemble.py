"""Training an ensemble of heads on one frozen decoder, on one cached decoder pass.

``fit_members`` trains the members of a ``models.heads.add_heads`` model one after
the other, each with its own seed (``member_seed``: initialisation and batch
order), its own early stopping, on the decoder's activations computed once
(``training.cache``). Members share no trainable weight, so this is exactly ``n``
independent fine-tunes of the head, for the price of one decoder pass.
"""

import dataclasses
import pathlib

import keras

from labquake_tf.files import HISTORY_FILE, TENSORBOARD_FOLDER
from labquake_tf.models.heads import member_outputs, member_seed
from labquake_tf.training import cache
from labquake_tf.training.finetune import batches
from labquake_tf.training.strategy import get_strategy
from labquake_tf.training.trainer import compile_model, count_steps


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
        trunk, _ = cache.split_at_head(keras.Model(model.inputs[0], outs[0]))
        x_train = cache.decoder_activations(trunk, x_train, config.batch_size)
        x_val = cache.decoder_activations(trunk, x_val, config.batch_size)
    val_ds = batches(x_val, y_val, config.batch_size)
    histories = []
    for i, out in enumerate(outs):
        member = keras.Model(model.inputs[0], out, name=f"{model.name}_member{i}")
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
