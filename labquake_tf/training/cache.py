"""Train a TCN's head on cached activations of its frozen decoder.

With ``input_norm`` and every ``decoder_block_i`` frozen, the decoder is a fixed
function (a frozen ``TCNBlock`` runs in inference mode, skipping its dropout): its
output for a window never changes during fine-tuning. Computing it once (batched,
on the accelerator) and training only the head on those activations gives the same
gradients as the full model at a fraction of the cost: each epoch runs the head alone.

The cache is NOT valid, and ``check_cacheable`` refuses, when a decoder block or
``input_norm`` is trainable: its output changes every step.

A frozen ``BatchNormalization`` does use its moving statistics in Keras 3, so
``input_norm`` is deterministic once frozen.

The cache holds ``n_windows x seq_len x filters`` floats (p4581's 5:1:4 training
part at the paper's size: about 1,400 x 70 x 512, 200 MB), in memory.

The head model returned by ``split_at_head`` calls the full model's own head
layers, so training it trains the full model: nothing has to be copied back.

``decoder_activations`` remembers, per window, what the last decoder it ran (known by
its weights) gave: the default fine-tune's forward-calibration twin is built from the
same frozen blocks and reads the run's validation windows and the early half of its
training windows again, so at the paper's shape a third of the decoder passes (the
cost that dominates a fine-tune) are lookups. One decoder's activations are kept at a
time (about 240 MB at the paper's shape); ``forget`` drops them.
"""

import hashlib

import keras
import numpy as np

from labquake_tf.models import decoder_blocks, is_streamable
from labquake_tf.models.heads import predict_batches


def check_cacheable(model):
    """Raise ``ValueError`` naming the layer that would make cached activations stale."""
    blocks = decoder_blocks(model)
    if not blocks:
        raise ValueError(f"{model.name}: no decoder_block_0 layer, nothing to cache")
    for layer in [model.get_layer("input_norm"), *blocks]:
        if layer.trainable:
            raise ValueError(f"{model.name}: {layer.name} is trainable, so its output changes "
                             "during training and cannot be cached (use the plain path)")


def split_at_head(model):
    """``(trunk, head)``: input -> last decoder block, and last block -> prediction.

    Both share the layers (and so the weights) of ``model``. A streamable model's
    trunk ends after ``history_crop``: only the head's seq_len steps are cached.
    """
    last = decoder_blocks(model)[-1]
    if is_streamable(model):
        last = model.get_layer("history_crop")
    trunk = keras.Model(model.inputs[0], last.output, name=f"{model.name}_trunk")
    inputs = keras.Input(last.output.shape[1:], name="decoder_output")
    x = inputs
    # The head is a chain; functional models list their layers in call order.
    for layer in model.layers[model.layers.index(last) + 1:]:
        x = layer(x)
    return trunk, keras.Model(inputs, x, name=f"{model.name}_head")


_MEMO = {"key": None, "rows": {}, "parts": []}


def forget():
    _MEMO.update(key=None, rows={}, parts=[])


def _fingerprint(trunk):
    h = hashlib.blake2b(digest_size=16)
    h.update(repr((trunk.input_shape, trunk.output_shape, trunk.dtype_policy.name)).encode())
    for w in trunk.weights:  # frozen weights and statistics: any change is a new decoder
        h.update(np.ascontiguousarray(keras.ops.convert_to_numpy(w)).tobytes())
    return h.digest()


def decoder_activations(trunk, x, batch_size=256):
    """The frozen decoder's output for windows ``x``, batched; windows this decoder (these
    weights) already ran are looked up, not run again."""
    x = np.ascontiguousarray(x)
    if not len(x):
        return np.zeros((0, *trunk.output_shape[1:]), "float32")
    key = _fingerprint(trunk)
    if _MEMO["key"] != key:
        forget()
        _MEMO["key"] = key
    rows = _MEMO["rows"]
    digests = [hashlib.blake2b(w.tobytes(), digest_size=16).digest() for w in x]
    new = list({d: i for i, d in enumerate(digests) if d not in rows}.values())
    if new:
        part = np.asarray(predict_batches(trunk, x[new], batch_size))
        for j, i in enumerate(new):
            rows[digests[i]] = (len(_MEMO["parts"]), j)
        _MEMO["parts"].append(part)
    if new and len(new) == len(x):  # nothing looked up: the part is the answer, in order
        return part
    parts = _MEMO["parts"]
    return np.stack([parts[p][j] for p, j in (rows[d] for d in digests)])
