"""The TCN's two custom layers: a weight-normed causal conv and a residual block."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="labquake_tf")
class WeightNormConv1D(keras.layers.Layer):
    """Causal dilated 1-D convolution with weight normalisation (Salimans & Kingma 2016).

    Owns ``v`` (kernel direction, ``(kernel_size, in, filters)``), ``g`` (one gain per
    output channel) and ``bias``; the kernel is ``g * v / ||v||``, the norm taken over
    the kernel and input axes as PyTorch's ``weight_norm(dim=0)`` does. It is a plain
    ``Layer`` rather than a ``Conv1D`` subclass because ``Conv1D``'s own save/load
    only knows ``kernel`` and ``bias``.
    """

    CONV_IMPLS = ("auto", "conv", "im2col", "taps")
    """How the dilated causal conv runs (same result, different kernels):
    conv: ``ops.conv`` (TF on CPU: SpaceToBatch + Conv2D for dilation > 1);
    im2col: the k shifted copies concatenated, one matmul;
    taps: one matmul per tap, summed (no k-fold copy of the input);
    auto: ``choose_conv_impl``, by device type and width."""

    def __init__(self, filters, kernel_size, dilation_rate=1, conv_impl="auto", **kwargs):
        super().__init__(**kwargs)
        if conv_impl not in self.CONV_IMPLS:
            raise ValueError(f"conv_impl must be one of {self.CONV_IMPLS}, got {conv_impl!r}")
        self.filters = int(filters)
        self.kernel_size = int(kernel_size)
        self.dilation_rate = int(dilation_rate)
        self.conv_impl = conv_impl

    def build(self, input_shape):
        shape = (self.kernel_size, input_shape[-1], self.filters)
        # A fresh initializer per layer: one Keras initializer instance repeats its draws.
        v0 = keras.initializers.GlorotUniform()(shape, dtype="float32")
        # autocast=False: under mixed_float16 the normalisation must see float32 weights.
        self.v = self.add_weight(name="v", shape=shape, initializer=lambda *_, **__: v0,
                                 autocast=False)
        # g = ||v|| makes the initial kernel exactly v.
        self.g = self.add_weight(name="g", shape=(self.filters,),
                                 initializer=lambda *_, **__: self._norm(v0), autocast=False)
        self.bias = self.add_weight(name="bias", shape=(self.filters,), initializer="zeros")

    @staticmethod
    def _norm(v):
        return ops.sqrt(ops.sum(ops.square(v), axis=(0, 1)))

    def kernel(self):
        v = ops.convert_to_tensor(self.v)
        return ops.cast(v * (self.g / self._norm(v)), self.compute_dtype)

    def call(self, inputs):
        left = (self.kernel_size - 1) * self.dilation_rate
        x = ops.pad(inputs, [[0, 0], [left, 0], [0, 0]])
        kernel = self.kernel()
        impl = self.conv_impl
        if impl == "auto":
            # compile_model sets ``resolved_impl`` once it knows whether XLA compiles the step.
            impl = getattr(self, "resolved_impl", None) or choose_conv_impl(
                self.kernel_size, inputs.shape[-1], self.dilation_rate)
        if impl == "conv":
            y = ops.conv(x, kernel, padding="valid", dilation_rate=self.dilation_rate)
        else:
            steps = ops.shape(inputs)[1]
            d = self.dilation_rate
            shifted = [x[:, j * d:j * d + steps] for j in range(self.kernel_size)]
            if impl == "im2col":
                y = ops.matmul(ops.concatenate(shifted, axis=-1),
                               ops.reshape(kernel, (-1, self.filters)))
            else:
                y = _sum([ops.matmul(s, kernel[j]) for j, s in enumerate(shifted)])
        return y + self.bias

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.filters)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters,
                "kernel_size": self.kernel_size, "dilation_rate": self.dilation_rate,
                "conv_impl": self.conv_impl}


def _sum(terms):
    total = terms[0]
    for t in terms[1:]:
        total = total + t
    return total


IM2COL_MIN_DEPTH = 4096
"""CPU: kernel taps x input channels from which im2col beats the plain conv (measured
about 4x at the paper's 8 x 512; at 8 x 128 the plain conv is 3x faster)."""


def choose_conv_impl(kernel_size, channels, dilation_rate, device=None, xla=False):
    """The conv implementation measured fastest for this shape, device type and compiler.

    ``benchmarks/bench_train.py`` (training step, batch 128, 2 shared CPU cores, paths
    timed round-robin), samples/s at 128 filters, kernel 8, 5 blocks, 128 steps: conv
    134.7, im2col 42.3, taps 52.8; under XLA 66.7 / 63.3 / 59.0. At 32 filters the plain
    conv is also ahead of im2col and taps. So on CPU the plain conv, up to the paper's
    width (``IM2COL_MIN_DEPTH``), where one matmul over the k shifted copies wins. GPUs:
    cuDNN's conv (not measured here). ``xla`` is accepted so a measured XLA-specific
    choice has a place; none is made today. ``device``: "CPU"/"GPU", default: visible.
    """
    if device is None:
        device = keras.distribution.list_devices()[0].split(":")[0].upper()
    if device != "CPU" or dilation_rate == 1 or kernel_size * channels < IM2COL_MIN_DEPTH:
        return "conv"
    return "im2col"


def resolve_conv_impls(model, xla, device=None):
    """Fix each ``auto`` conv's implementation for a model about to be compiled with or
    without XLA; returns ``{implementation: number of convs}`` (for the run's config)."""
    counts = {}
    for layer in model._flatten_layers():
        if isinstance(layer, WeightNormConv1D) and layer.built:
            impl = layer.conv_impl
            if impl == "auto":
                impl = layer.resolved_impl = choose_conv_impl(
                    layer.kernel_size, layer.v.shape[1], layer.dilation_rate, device, xla)
            counts[impl] = counts.get(impl, 0) + 1
    return counts


@keras.saving.register_keras_serializable(package="labquake_tf")
class TCNBlock(keras.layers.Layer):
    """One residual TCN block: (weight-normed causal conv -> ReLU -> dropout) x 2,
    plus the input (through a 1x1 conv when the widths differ), then ReLU.

    With ``trainable=False`` the block skips dropout even at train time."""

    def __init__(self, filters, kernel_size, dilation_rate=1, dropout=0.0, conv_impl="auto",
                 **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.kernel_size = int(kernel_size)
        self.dilation_rate = int(dilation_rate)
        self.dropout = float(dropout)
        self.conv_impl = conv_impl
        conv = dict(filters=filters, kernel_size=kernel_size, dilation_rate=dilation_rate,
                    conv_impl=conv_impl, dtype=self.dtype_policy)
        self.conv1 = WeightNormConv1D(name="conv1", **conv)
        self.conv2 = WeightNormConv1D(name="conv2", **conv)
        self.drop1 = keras.layers.Dropout(dropout, name="dropout1")
        self.drop2 = keras.layers.Dropout(dropout, name="dropout2")
        self.residual = None

    def build(self, input_shape):
        if input_shape[-1] != self.filters:
            self.residual = keras.layers.Conv1D(
                self.filters, 1, kernel_initializer="glorot_uniform",
                dtype=self.dtype_policy, name="residual")
            self.residual.build(input_shape)
        self.conv1.build(input_shape)
        self.conv2.build((*input_shape[:-1], self.filters))

    def call(self, inputs, training=None):
        # A frozen block runs in inference mode, as Keras' BatchNormalization and a
        # PyTorch module in eval() do: a frozen pretrained decoder stays deterministic.
        training = training if self.trainable else False
        h = self.drop1(ops.relu(self.conv1(inputs)), training=training)
        h = self.drop2(ops.relu(self.conv2(h)), training=training)
        skip = inputs if self.residual is None else self.residual(inputs)
        return ops.relu(h + skip)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.filters)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters,
                "kernel_size": self.kernel_size, "dilation_rate": self.dilation_rate,
                "dropout": self.dropout, "conv_impl": self.conv_impl}
