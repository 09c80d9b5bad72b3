import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from labquake_tf.models import (PRESETS, build_from_preset, build_tcn, decoder_blocks,
                                receptive_field)


def n_params(weights):
    return sum(int(np.prod(w.shape)) for w in weights)


def test_blocks_dilations_and_names():
    model = build_from_preset("tiny", n_features=2, n_targets=3)
    blocks = decoder_blocks(model)
    assert [b.name for b in blocks] == ["decoder_block_0", "decoder_block_1", "decoder_block_2"]
    assert [b.dilation_rate for b in blocks] == [1, 2, 4]
    assert [b.conv2.dilation_rate for b in blocks] == [1, 2, 4]
    assert model.input.name == "ae_features" and model.input.shape == (None, 16, 2)
    assert model.get_layer("input_norm").axis in (1, [1])
    assert model.get_layer("prediction").dtype_policy.name == "float32"
    assert model.output.shape == (None, 3)
    head = [layer.name for layer in model.layers if layer.name.startswith("head_")]
    assert head == ["head_pad", "head_conv", "head_flatten", "head_dense"]


def test_receptive_field_formula_and_a_longer_window_read_whole():
    assert receptive_field(8, 9) == 1 + 2 * 7 * 511 == 7155
    assert receptive_field(8, 5) == 435
    assert receptive_field(2, 1) == 3
    for preset in PRESETS.values():  # every preset window fits its decoder
        assert preset["seq_len"] <= receptive_field(preset["kernel_size"], preset["blocks"])
    # A window longer than the field: the flattening head still reads its first step.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = build_tcn(30, filters=4, kernel_size=3, blocks=2)
    x = np.random.default_rng(0).random((1, 30, 1)).astype("float32")
    moved = x.copy()
    moved[0, 0, 0] += 1.0
    assert abs(float(model(moved)[0, 0]) - float(model(x)[0, 0])) > 1e-4


def test_unknown_preset_names_the_choices():
    with pytest.raises(ValueError, match="unknown TCN preset 'huge'.*'paper'"):
        build_from_preset("huge")


def test_reference_finetune_parameter_count():
    """PyTorch reference, seq 70 / 5 blocks / 512 filters / kernel 8, one target."""
    model = build_from_preset("finetune-paper")
    decoder = n_params(w for b in decoder_blocks(model) for w in b.trainable_weights)
    total = n_params(model.trainable_weights)
    assert total == 19_537_357
    assert decoder == 18_889_728
    assert total - decoder == 647_629
    # What is not counted: the BatchNorm moving mean and variance, one per step.
    assert n_params(model.non_trainable_weights) == 2 * 70


def test_decoder_is_causal():
    model = build_from_preset("tiny")
    decoder = keras.Model(model.input, model.get_layer("decoder_block_2").output)
    x = np.random.default_rng(0).normal(size=(1, 16, 1)).astype("float32")
    x_changed = x.copy()
    x_changed[0, 10] += 5.0
    # training=False: BatchNorm uses its moving statistics, so no step sees another's value.
    y, y_changed = decoder(x, training=False), decoder(x_changed, training=False)
    np.testing.assert_array_equal(y[0, :10], y_changed[0, :10])
    assert not np.allclose(y[0, 10:], y_changed[0, 10:])


def test_config_round_trip_and_keras_file(tmp_path):
    model = build_from_preset("tiny", n_targets=2, dropout=0.1)
    rng = np.random.default_rng(0)
    # Move every weight (g, v, BN statistics) off its initial value; variances stay > 0.
    model.set_weights([w * rng.uniform(0.5, 1.5, w.shape) + rng.uniform(0, 0.1, w.shape)
                       for w in model.get_weights()])
    x = rng.normal(size=(3, 16, 1)).astype("float32")
    expected = model(x, training=False).numpy()

    clone = keras.Model.from_config(model.get_config())
    assert clone.get_config() == model.get_config()
    clone.set_weights(model.get_weights())
    np.testing.assert_allclose(clone(x, training=False), expected, rtol=1e-6)

    model.save(tmp_path / "tcn.keras")
    loaded = keras.saving.load_model(tmp_path / "tcn.keras")
    np.testing.assert_array_equal(loaded(x, training=False), expected)
    g = loaded.get_layer("decoder_block_1").conv1.g.numpy()
    np.testing.assert_array_equal(g, model.get_layer("decoder_block_1").conv1.g.numpy())


def test_mixed_float16_builds_with_float32_output():
    previous = keras.config.dtype_policy()
    try:
        keras.config.set_dtype_policy("mixed_float16")
        model = build_from_preset("tiny")
    finally:
        keras.config.set_dtype_policy(previous)
    assert model.get_layer("decoder_block_0").compute_dtype == "float16"
    assert model.get_layer("decoder_block_0").conv1.v.dtype == "float32"
    y = model(np.ones((2, 16, 1), "float32"))
    assert keras.backend.standardize_dtype(y.dtype) == "float32"
    assert model.output.dtype == "float32"


def test_mirrored_strategy_and_export(tmp_path):
    x = np.random.default_rng(0).normal(size=(4, 16, 1)).astype("float32")
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        model = build_from_preset("tiny")
    assert isinstance(model.get_layer("decoder_block_0").conv1.g.value,
                      tf.distribute.DistributedValues)
    expected = model(x, training=False).numpy()
    model.export(tmp_path / "export", verbose=False)
    served = tf.saved_model.load(str(tmp_path / "export"))  # keep it alive while serving
    np.testing.assert_allclose(served.serve(tf.constant(x)).numpy(), expected,
                               rtol=1e-5, atol=1e-6)


def test_streamable_variant_reads_its_history_and_never_sees_padding(tmp_path):
    from labquake_tf.models import head_length, input_length, is_streamable

    model = build_from_preset("tiny-stream", n_features=2, n_targets=2)
    history = receptive_field(3, 3) - 1
    assert model.input_shape == (None, 16 + history, 2) == (None, input_length(16, 3, 3, True), 2)
    assert is_streamable(model) and not is_streamable(build_from_preset("tiny"))
    assert head_length(model) == 16 and "streamable" not in PRESETS["tiny"]
    norm = model.get_layer("input_norm")
    assert norm.axis in (-1, 2, [2]) and tuple(norm.moving_mean.shape) == (2,)
    assert model.get_layer("history_crop").output.shape == (None, 16, 8)
    assert [b.name for b in decoder_blocks(model)] == [f"decoder_block_{i}" for i in range(3)]

    # The cropped decoder outputs for a window equal those of the same steps inside a
    # much longer stream: no zero padding reaches them.
    rng = np.random.default_rng(0)
    stream = rng.normal(size=(1, 200, 2)).astype("float32")
    long_in = keras.Input((200, 2))
    z = long_in
    for layer in [model.get_layer("input_norm"), *decoder_blocks(model)]:
        z = layer(z)
    long_decoder = keras.Model(long_in, z)
    trunk = keras.Model(model.input, model.get_layer("history_crop").output)
    window = stream[:, -model.input_shape[1]:]
    np.testing.assert_allclose(trunk(window, training=False)[0],
                               long_decoder(stream, training=False)[0, -16:], rtol=1e-5, atol=1e-6)

    clone = keras.Model.from_config(model.get_config())
    assert clone.get_config() == model.get_config() and is_streamable(clone)
    model.save(tmp_path / "s.keras")
    loaded = keras.saving.load_model(tmp_path / "s.keras")
    np.testing.assert_array_equal(loaded(window, training=False), model(window, training=False))
