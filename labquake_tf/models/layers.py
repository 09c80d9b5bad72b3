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
    conv: ``ops.conv`` (TF: SpaceToBatch + Conv2D for dilation > 1);
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

    def live_taps(self, steps):
        """The first tap that can reach the window: tap ``j`` reads ``x[t - (k-1-j) d]``, so
        a tap shifted by ``steps`` or more reads only the causal zero padding. At the
        paper's shape (kernel 8, 512 steps) that is 6 of 8 taps at dilation 256 and 4 at
        128: dropping them leaves the output as it was (their terms are exact zeros) and
        cuts the padding from 1,792 steps to 256 and the FLOPs of those convs by 75 / 50 %."""
        if steps is None:  # length unknown when traced: keep every tap
            return 0
        return max(0, self.kernel_size - 1 - (int(steps) - 1) // self.dilation_rate)

    def call(self, inputs):
        first = self.live_taps(inputs.shape[1])
        taps, d = self.kernel_size - first, self.dilation_rate
        x = ops.pad(inputs, [[0, 0], [(taps - 1) * d, 0], [0, 0]])
        kernel = self.kernel()[first:]
        impl = self.conv_impl
        if impl == "auto":
            # compile_model sets ``resolved_impl`` once it knows whether XLA compiles the step.
            impl = getattr(self, "resolved_impl", None) or choose_conv_impl(self.dilation_rate)
        if impl == "conv":
            y = ops.conv(x, kernel, padding="valid", dilation_rate=d if taps > 1 else 1)
        else:
            steps = ops.shape(inputs)[1]
            shifted = [x[:, j * d:j * d + steps] for j in range(taps)]
            if impl == "im2col":
                y = ops.matmul(ops.concatenate(shifted, axis=-1) if taps > 1 else shifted[0],
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


def choose_conv_impl(dilation_rate, device=None, xla=False):
    """The conv implementation measured fastest for this device type and compiler.

    CPU, measured with ``benchmarks/bench_train.py`` (training step, float32, 2 CPU cores
    shared with other jobs; every path and the PyTorch peer timed in one rotating
    round-robin): median over the rounds of samples/s / PyTorch's best thread count in
    the same round (> 1: faster than PyTorch); two runs "a/b" at small and medium width.

    ==========================  =========  =========  =========  ==========  =========
    width (batch)               conv       conv+xla   im2col     im2col+xla  taps+xla
    ==========================  =========  =========  =========  ==========  =========
    small 32/64/4/4 (128)       1.14/1.34  0.99/1.06  0.56/0.70  1.19/1.18   1.06/1.01
    medium 128/128/8/5 (128)    1.27/1.31  0.88/0.87  0.58/0.58  1.04/1.05   0.96/0.91
    finetune-paper (32)         1.05       --         0.88       1.04        1.01
    same, decoder frozen (32)   0.97       --         --         0.82        --
    paper 512/512/8/9 (8)       0.90       0.07       0.90       1.07        --
    paper (32)                  1.34       --         1.24       1.60        --
    ==========================  =========  =========  =========  ==========  =========

    (filters/steps/kernel/blocks; finetune-paper is 512/70/8/5; taps eager 0.59-0.67.)
    Eager, TensorFlow's dilated conv (SpaceToBatch + oneDNN's conv) is the fastest or as
    fast at every width. Under XLA the dilated conv is slow on CPU (13x at paper width)
    and one matmul over the k shifted copies (im2col) is the fastest at every width. So
    on CPU: im2col for dilated convs in an XLA-compiled step, else the plain conv
    (whether XLA runs: ``training.trainer.choose_jit_compile``). Folding time into the
    batch by hand (what SpaceToBatch does) timed the same as ``conv`` per layer, so it is
    not an implementation here. GPUs: cuDNN's conv; not measured (no GPU in the session
    that set these rules). ``device``: "CPU"/"GPU", default: the visible one.

    Commands, each with ``--torch-python TORCH_PY``: ``--preset small --steps 20
    --repeats 5``; ``--filters 128 --seq-len 128 --kernel 8 --blocks 5 --steps 6 --warmup
    2 --repeats 5``; ``--preset finetune-paper --batch 32 --steps 2 --warmup 1 --repeats
    3`` (``--frozen-decoder --steps 3``); ``--preset paper --batch 8 --steps 2 --warmup 1
    --repeats 3`` (``--batch 32 --steps 1``).
    """
    if device is None:
        device = keras.distribution.list_devices()[0].split(":")[0].upper()
    if device == "CPU" and xla and dilation_rate > 1:
        return "im2col"
    return "conv"


def conv_impl_plan(blocks, device=None, xla=False, conv_impl="auto"):
    """``{dilation: implementation}`` of a TCN's causal convs (block i dilates 2**i), as
    ``resolve_conv_impls`` will fix them: what a run's config records before it builds."""
    return {str(2 ** i): conv_impl if conv_impl != "auto" else
            choose_conv_impl(2 ** i, device, xla) for i in range(blocks)}


def resolve_conv_impls(model, xla, device=None):
    """Fix each ``auto`` conv's implementation for a model about to be compiled with or
    without XLA; returns ``{implementation: number of convs}`` (for the run's config)."""
    counts = {}
    for layer in model._flatten_layers():
        if isinstance(layer, WeightNormConv1D) and layer.built:
            impl = layer.conv_impl
            if impl == "auto":
                impl = layer.resolved_impl = choose_conv_impl(layer.dilation_rate, device, xla)
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
