import keras
import numpy as np
import pytest
import tensorflow as tf

from labquake_tf.models import TCNBlock, WeightNormConv1D


def causal_conv_reference(x, kernel, bias, dilation):
    """Plain numpy causal dilated conv: y[t] = sum_j x[t - (k-1-j)*d] @ kernel[j] + bias."""
    k = kernel.shape[0]
    padded = np.pad(x, [(0, 0), ((k - 1) * dilation, 0), (0, 0)])
    steps = x.shape[1]
    return sum(padded[:, j * dilation:j * dilation + steps] @ kernel[j] for j in range(k)) + bias


@pytest.mark.parametrize("in_width", [4, 342])  # conv path, matmul path (3 * 342 >= 1024)
def test_weight_norm_conv_matches_numpy_and_starts_at_v(in_width):
    layer = WeightNormConv1D(5, 3, dilation_rate=2)
    x = np.random.default_rng(0).normal(size=(2, 11, in_width)).astype("float32")
    y = layer(x)
    v = layer.v.numpy()
    assert v.shape == (3, in_width, 5) and layer.g.shape == (5,) and layer.bias.shape == (5,)
    np.testing.assert_allclose(layer.kernel().numpy(), v, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(y, causal_conv_reference(x, v, 0.0, 2), rtol=1e-4, atol=1e-5)

    layer.g.assign(np.arange(1, 6, dtype="float32"))
    layer.bias.assign(np.full(5, 0.5, "float32"))
    layer.v.assign(3.0 * v)  # the direction alone matters
    expected_kernel = v / np.linalg.norm(v, axis=(0, 1)) * np.arange(1, 6)
    np.testing.assert_allclose(layer.kernel().numpy(), expected_kernel, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(layer(x), causal_conv_reference(x, expected_kernel, 0.5, 2),
                               rtol=1e-4, atol=1e-5)


def test_weight_norm_conv_layers_draw_different_weights():
    a, b = WeightNormConv1D(4, 3), WeightNormConv1D(4, 3)
    a.build((None, 8, 4)), b.build((None, 8, 4))
    assert not np.allclose(a.v.numpy(), b.v.numpy())


@pytest.mark.parametrize("in_width, has_residual_conv", [(3, True), (6, False)])
def test_block_round_trips_and_residual(in_width, has_residual_conv):
    block = TCNBlock(6, 2, dilation_rate=4, dropout=0.2, name="b")
    x = np.random.default_rng(1).normal(size=(2, 9, in_width)).astype("float32")
    y = block(x)
    assert y.shape == (2, 9, 6) and float(tf.reduce_min(y)) >= 0.0
    assert (block.residual is not None) == has_residual_conv
    assert len(block.trainable_weights) == 6 + 2 * has_residual_conv

    clone = TCNBlock.from_config(block.get_config())
    assert clone.get_config() == block.get_config()
    clone.build(x.shape)
    clone.set_weights(block.get_weights())
    np.testing.assert_allclose(clone(x), y, rtol=1e-6)


def test_weight_norm_conv_under_mixed_float16_keeps_float32_weights():
    layer = WeightNormConv1D(4, 2, dtype="mixed_float16")
    y = layer(np.ones((1, 5, 3), "float32"))
    assert y.dtype == "float16"
    assert layer.v.dtype == layer.g.dtype == "float32"
    assert keras.backend.standardize_dtype(layer.kernel().dtype) == "float16"


def test_frozen_block_skips_dropout():
    block = TCNBlock(4, 2, dropout=0.5)
    x = np.ones((2, 6, 4), "float32")
    assert not np.allclose(block(x, training=True), block(x, training=True))
    block.trainable = False
    np.testing.assert_array_equal(block(x, training=True), block(x, training=False))


@pytest.mark.parametrize("channels", [3, 160])
def test_conv_implementations_agree(channels):
    # Same weights, same causal dilated conv, three kernels (bench_train.py times them).
    x = np.random.default_rng(0).normal(size=(2, 20, channels)).astype("float32")
    outs = []
    for impl in ("conv", "im2col", "taps"):
        layer = WeightNormConv1D(5, 8, dilation_rate=2, conv_impl=impl)
        layer.build(x.shape)
        if outs:
            layer.set_weights(first.get_weights())
        else:
            first = layer
        outs.append(np.asarray(layer(x)))
        assert WeightNormConv1D.from_config(layer.get_config()).conv_impl == impl
    np.testing.assert_allclose(outs[1], outs[0], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(outs[2], outs[0], rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="conv_impl must be one of"):
        WeightNormConv1D(5, 3, conv_impl="fft")


@pytest.mark.parametrize("impl", ["conv", "im2col", "taps"])
@pytest.mark.parametrize("steps,dilation,live", [(40, 16, 3), (40, 8, 5), (40, 4, 8), (40, 64, 1)])
def test_taps_that_read_only_padding_are_dropped(impl, steps, dilation, live):
    """Taps shifted by the whole window read zeros (kernel 8, dilation 16, 40 steps: taps
    0..4); the layer drops them and its output and gradients stay the full conv's."""
    layer = WeightNormConv1D(6, 8, dilation_rate=dilation, conv_impl=impl)
    x = np.random.default_rng(1).normal(size=(3, steps, 5)).astype("float32")
    layer.build(x.shape)
    layer.bias.assign(np.full(6, 0.25, "float32"))
    assert layer.kernel_size - layer.live_taps(steps) == live
    assert layer.live_taps(None) == 0  # length unknown: every tap kept
    kernel = layer.kernel().numpy()
    np.testing.assert_allclose(layer(x), causal_conv_reference(x, kernel, 0.25, dilation),
                               rtol=1e-5, atol=1e-5)
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.square(layer(xt)))
    grads = tape.gradient(loss, [layer.v, layer.g, layer.bias])
    v, g = tf.Variable(layer.v.numpy()), tf.Variable(layer.g.numpy())
    with tf.GradientTape() as tape:  # the full formulation: every tap over full padding
        k = v * (g / tf.sqrt(tf.reduce_sum(tf.square(v), axis=(0, 1))))
        padded = tf.pad(xt, [[0, 0], [7 * dilation, 0], [0, 0]])
        y = sum(padded[:, j * dilation:j * dilation + steps] @ k[j] for j in range(8)) + 0.25
        loss_ref = tf.reduce_sum(tf.square(y))
    ref = tape.gradient(loss_ref, [v, g])
    np.testing.assert_allclose(float(loss), float(loss_ref), rtol=1e-5)
    for got, want in zip(grads[:2], ref):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_auto_conv_choice_by_device_and_compiler():
    from labquake_tf.models.layers import choose_conv_impl

    # CPU eager: TF's dilated conv measured fastest at every width (bench_train.py).
    assert choose_conv_impl(2, "CPU") == "conv"
    assert choose_conv_impl(256, "CPU") == "conv"
    # CPU under XLA: its dilated conv is slow; one matmul over the shifted copies wins.
    assert choose_conv_impl(2, "CPU", xla=True) == "im2col"
    assert choose_conv_impl(256, "CPU", xla=True) == "im2col"
    assert choose_conv_impl(1, "CPU", xla=True) == "conv"  # undilated: one GEMM
    assert choose_conv_impl(2, "GPU", xla=True) == "conv"  # cuDNN
