"""An ensemble of heads on one decoder: the model side (building, reading members).

``add_heads(model, n)`` turns a fine-tune model (input -> input_norm -> decoder
blocks -> head chain -> ``prediction``) into ONE functional model: the same trunk
feeding ``n`` fresh copies of the head (layers ``member{i}_<head layer>``) whose
outputs ``prediction`` averages. It saves, loads, fine-tunes from (``finetune``
reads only ``decoder_block_i``) and exports like any TCN; with ``n == 1`` it is the
model itself.

The spread of the members (their standard deviation per window) feeds the
normalized conformal score of ``evaluation.intervals``; ``predict_members``
returns every member's scaled output for it. Training the members is
``training.ensemble``'s job.
"""

import weakref

import keras
import numpy as np

from labquake_tf.errors import UsageError
from labquake_tf.models.tcn import decoder_blocks, is_streamable

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


def head_layers(model):
    """``(last trunk layer, [head layers])``: where the decoder ends and the head chain
    of a single-head model begins."""
    # A streamable model's trunk ends after history_crop.
    last = model.get_layer("history_crop") if is_streamable(model) else decoder_blocks(model)[-1]
    # The head is a chain; functional models list their layers in call order.
    return last, model.layers[model.layers.index(last) + 1:]


def add_heads(model, n, seed=0):
    """``model``'s trunk with ``n`` freshly initialised copies of its head, averaged."""
    n = check_members(n)
    if n == 1:
        return model
    last, head = head_layers(model)
    outputs = []
    for i in range(n):
        keras.utils.set_random_seed(member_seed(seed, i))
        x = last.output
        for layer in head:
            x = layer.__class__.from_config({**layer.get_config(),
                                             "name": f"member{i}_{layer.name}"})(x)
        outputs.append(x)
    mean = keras.layers.Average(name="prediction", dtype="float32")(outputs)
    return keras.Model(model.inputs[0], mean, name=model.name)


def member_outputs(model):
    """The members' output tensors (``[model.output]`` for a single head)."""
    names = {layer.name for layer in model.layers}
    outs = []
    while f"member{len(outs)}_prediction" in names:
        outs.append(model.get_layer(f"member{len(outs)}_prediction").output)
    return outs or [model.outputs[0]]


def n_members(model):
    return len(member_outputs(model))


_MEMBERS_MODELS = weakref.WeakKeyDictionary()


def members_model(model):
    """``x -> [mean, member_0, ..., member_{n-1}]``, sharing ``model``'s layers.

    One per ``model``, kept while it lives: a new Model per call traced a new predict
    function each time (TensorFlow's "triggered tf.function retracing" warning on every
    evaluation, and a trace's cost per call).
    """
    found = _MEMBERS_MODELS.get(model)
    if found is None:
        found = _MEMBERS_MODELS[model] = keras.Model(
            model.inputs[0], [model.outputs[0], *member_outputs(model)],
            name=f"{model.name}_members")
    return found


def predict_members(model, x, batch_size=512):
    """``(mean, members)``: ``(n, n_targets)`` and ``(n_members, n, n_targets)``, scaled."""
    out = predict_batches(members_model(model), x, batch_size)
    return np.asarray(out[0], np.float64), np.stack([np.asarray(o, np.float64) for o in out[1:]])


def predict_batches(model, x, batch_size=512):
    """``model`` on ``x`` in batches, eagerly: numpy out (a list for several outputs).

    For one-off inference on a model made for it (a fine-tune's trunk, its members):
    ``Model.predict`` traces a new tf.function per model and again for a last, shorter
    batch, which costs more than these passes and makes TensorFlow warn of
    "excessive" retracing when several such models predict in a row.
    """
    x = np.asarray(x)
    # a model built on a list of one input wants a list (else Keras warns per call)
    listed = isinstance(getattr(model, "_inputs_struct", None), (list, tuple))
    parts = [model([x[i:i + batch_size]] if listed else x[i:i + batch_size], training=False)
             for i in range(0, max(len(x), 1), batch_size)]  # 0 rows: 0-row outputs
    if isinstance(parts[0], (list, tuple)):
        return [np.concatenate([np.asarray(p[k]) for p in parts]) for k in range(len(parts[0]))]
    return np.concatenate([np.asarray(p) for p in parts])
