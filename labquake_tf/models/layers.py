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

    IM2COL_MIN_DEPTH = 1024
    """Kernel taps x input channels from which the conv runs as one matmul (see call)."""

    def __init__(self, filters, kernel_size, dilation_rate=1, **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.kernel_size = int(kernel_size)
        self.dilation_rate = int(dilation_rate)

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
        if self.kernel_size * inputs.shape[-1] < self.IM2COL_MIN_DEPTH:
            y = ops.conv(x, kernel, padding="valid", dilation_rate=self.dilation_rate)
        else:
            # Wide layers: one GEMM over the k shifted copies beats TF's CPU dilated conv
            # (SpaceToBatch + Conv2D) about 4x, forward + backward, at 512 channels.
            steps = ops.shape(inputs)[1]
            d = self.dilation_rate
            cols = ops.concatenate([x[:, j * d:j * d + steps] for j in range(self.kernel_size)],
                                   axis=-1)
            y = ops.matmul(cols, ops.reshape(kernel, (-1, self.filters)))
        return y + self.bias

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.filters)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters,
                "kernel_size": self.kernel_size, "dilation_rate": self.dilation_rate}


@keras.saving.register_keras_serializable(package="labquake_tf")
class TCNBlock(keras.layers.Layer):
    """One residual TCN block: (weight-normed causal conv -> ReLU -> dropout) x 2,
    plus the input (through a 1x1 conv when the widths differ), then ReLU.

    With ``trainable=False`` the block skips dropout even at train time."""

    def __init__(self, filters, kernel_size, dilation_rate=1, dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.kernel_size = int(kernel_size)
        self.dilation_rate = int(dilation_rate)
        self.dropout = float(dropout)
        conv = dict(filters=filters, kernel_size=kernel_size, dilation_rate=dilation_rate,
                    dtype=self.dtype_policy)
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
                "dropout": self.dropout}
