"""The functional TCN of Wang, Xia, Yao & Marone (2025) and its presets."""


import keras

from labquake_tf.models.layers import TCNBlock

PRESETS = {
    # The pretraining model of the paper.
    "paper": dict(seq_len=512, filters=512, kernel_size=8, blocks=9, dropout=0.1),
    # The paper's fine-tuning shape: 5 blocks, 70-step windows.
    "finetune-paper": dict(seq_len=70, filters=512, kernel_size=8, blocks=5, dropout=0.1),
    # 4 blocks of kernel 4 see 91 steps, covering the 64-step window; 0.57 M parameters
    # (0.53 M in the head's flatten->Dense): trains in minutes on 2 CPU cores.
    "small": dict(seq_len=64, filters=32, kernel_size=4, blocks=4, dropout=0.1),
    # For tests: receptive field 29 >= 16 steps, 0.14 M parameters (mostly the head).
    "tiny": dict(seq_len=16, filters=8, kernel_size=3, blocks=3, dropout=0.0),
}
# The streamable variants (``build_tcn(streamable=True)``): same decoder and head, inputs
# seq_len + receptive_field - 1 steps long. Kept apart so the reference presets stay the paper's.
STREAM_PRESETS = {f"{name}-stream": dict(PRESETS[name], streamable=True)
                  for name in ("paper", "finetune-paper", "small", "tiny")}
PRESETS.update(STREAM_PRESETS)


def receptive_field(kernel_size, blocks):
    """Steps the decoder sees: two causal convs per block, dilation 2**i in block i."""
    return 1 + 2 * (kernel_size - 1) * (2 ** blocks - 1)


def input_length(seq_len, kernel_size, blocks, streamable=False):
    """Steps of input the model reads: seq_len, plus the decoder's history when streamable."""
    return seq_len + (receptive_field(kernel_size, blocks) - 1 if streamable else 0)


def build_tcn(seq_len, n_features=1, n_targets=1, filters=32, kernel_size=4, blocks=4,
              dropout=0.1, name="tcn", norm_epsilon=1e-3, streamable=False, conv_impl="auto"):
    """Input ``ae_features`` (seq_len, n_features) -> ``input_norm`` -> decoder blocks ->
    ``head_*`` -> ``prediction`` (n_targets, float32 under any precision policy).

    ``norm_epsilon`` is Keras' default; a model imported from PyTorch keeps BatchNorm1d's
    1e-5 (``models.torch_import``) so its outputs match to float32 rounding.

    ``streamable=True`` builds the variant a stream can run incrementally
    (``labquake_tf.streaming``): ``input_norm`` normalises per feature, not per time
    step, so a step's normalised value does not depend on its place in the window; and
    the input is ``receptive_field - 1`` steps longer, cut off again (``history_crop``)
    after the decoder, so the head's ``seq_len`` decoder outputs never see the causal
    convs' zero padding. Its prediction is then a function of the stream alone.

    ``conv_impl``: how the causal convs run (``WeightNormConv1D.CONV_IMPLS``); the
    result is the same, the speed is not (``auto`` picks by device and width).
    """
    seen = receptive_field(kernel_size, blocks)
    history = seen - 1 if streamable else 0
    # A window longer than the receptive field is fine: the head flattens every step's
    # decoder output, so each step reaches the prediction (only no single output sees all).
    inputs = keras.Input((seq_len + history, n_features), name="ae_features")
    # axis=1: one mean/variance per time step, as the reference BatchNorm1d(seq_len) does;
    # the streamable variant keeps one per feature.
    x = keras.layers.BatchNormalization(axis=-1 if streamable else 1, epsilon=norm_epsilon,
                                        name="input_norm")(inputs)
    for i in range(blocks):
        x = TCNBlock(filters, kernel_size, dilation_rate=2 ** i, dropout=dropout,
                     conv_impl=conv_impl, name=f"decoder_block_{i}")(x)
    if streamable:
        x = keras.layers.Cropping1D((history, 0), name="history_crop")(x)
    # The reference head: Conv1d(filters, 64, 2, padding=1) pads both ends (length + 1).
    dense = dict(kernel_initializer="glorot_uniform", bias_initializer="zeros")
    x = keras.layers.ZeroPadding1D(1, name="head_pad")(x)
    x = keras.layers.Conv1D(64, 2, activation="relu", name="head_conv", **dense)(x)
    x = keras.layers.Flatten(name="head_flatten")(x)
    x = keras.layers.Dense(128, activation="relu", name="head_dense", **dense)(x)
    outputs = keras.layers.Dense(n_targets, dtype="float32", name="prediction", **dense)(x)
    return keras.Model(inputs, outputs, name=name)


def build_from_preset(name, **overrides):
    """``build_tcn`` with a preset's arguments, any of them overridden."""
    if name not in PRESETS:
        raise ValueError(f"unknown TCN preset {name!r}; choose one of {sorted(PRESETS)}")
    return build_tcn(**{**PRESETS[name], **overrides})


def is_streamable(model):
    """Whether ``model`` is ``build_tcn(streamable=True)``'s variant."""
    return any(layer.name == "history_crop" for layer in model.layers)


def head_length(model):
    """The ``seq_len`` the head reads (the input length less the streamable history)."""
    history = model.get_layer("history_crop").cropping[0] if is_streamable(model) else 0
    return int(model.input_shape[1]) - int(history)


def decoder_blocks(model):
    """The model's ``decoder_block_i`` layers, in order."""
    names = {layer.name: layer for layer in model.layers}
    blocks = []
    while f"decoder_block_{len(blocks)}" in names:
        blocks.append(names[f"decoder_block_{len(blocks)}"])
    return blocks
