"""Two ways to run a TCN over a stream of scaled feature steps.

Both take ``(m, n_features)`` new steps per ``push`` and return the model's
(scaled) outputs ``(j, n_targets)`` for the windows those steps completed, with
the indices (0-based step count since the start or the last ``reset``) of the
steps that ended them. A window ends at every step from the model's input
length on, exactly the windows ``model.predict`` would see if cut from the
same steps.

* ``IncrementalEngine``: each dilated causal conv keeps its last ``(k-1)·d``
  inputs and computes only the new output column(s), in numpy float32, from
  weights fixed once (the weight-normed kernels ``g·v/‖v‖``, the BatchNorm
  inference affine). The head reads the last ``seq_len`` decoder outputs; its
  conv is incremental too (each decoder output's two tap products are kept),
  only its dense layers run over the whole window. Valid for
  ``build_tcn(streamable=True)`` models only, whose windows' outputs never see
  the convs' zero padding nor depend on a step's position in the window.
  A mixed_float16 model runs in float32 here: it agrees with the same weights in
  float32 to 1e-5, with the float16 model to float16's rounding (~1e-3).
* ``WindowedEngine``: keeps the last input-length steps and runs the Keras
  model on every completed window, batched per push. Any model.
"""

import numpy as np

from labquake_tf.data.windows import cut
from labquake_tf.models import decoder_blocks, head_length, is_streamable


class NotStreamableError(ValueError):
    """The incremental engine was given a model whose window outputs depend on the window."""


class WindowedEngine:
    """Recompute the whole window at every step (batched per push)."""

    def __init__(self, model, batch_size=256):
        import tensorflow as tf

        self.model = model
        self.input_len = int(model.input_shape[1])
        self.n_features = int(model.input_shape[2])
        self.batch_size = int(batch_size)
        dtype = model.inputs[0].dtype
        self._call = tf.function(lambda x: tf.cast(model(tf.cast(x, dtype), training=False),
                                                    tf.float32),
                                 input_signature=[tf.TensorSpec([None, self.input_len,
                                                                 self.n_features], tf.float32)],
                                 autograph=False)
        self.reset()

    def reset(self):
        self.n_steps = 0
        self._tail = np.zeros((0, self.n_features), np.float32)

    def push(self, steps):
        steps = _check_steps(steps, self.n_features)
        x = np.concatenate([self._tail, steps])
        first = self.n_steps - len(self._tail)  # index of x[0]
        self.n_steps += len(steps)
        self._tail = x[max(0, len(x) - (self.input_len - 1)):]
        n_windows = len(x) - self.input_len + 1
        if n_windows <= 0:
            return np.zeros((0,), np.int64), np.zeros((0, self.n_targets), np.float32)
        windows = cut(x, None, self.input_len)  # (n_windows, input_len, n_features), a view
        out = [self._call(np.ascontiguousarray(windows[i:i + self.batch_size])).numpy()
               for i in range(0, n_windows, self.batch_size)]
        ends = first + self.input_len - 1 + np.arange(n_windows)
        return ends, np.concatenate(out)

    @property
    def n_targets(self):
        return int(self.model.output_shape[-1])


class _Conv:
    """One causal conv's numpy form: kernel flattened to ``(k·Cin, F)`` and a ring
    buffer of its recent inputs, ``(k-1)·d`` plus room for a push's new steps."""

    def __init__(self, kernel, bias, dilation, max_push):
        k, c_in, f = kernel.shape
        self.k, self.d, self.c_in = k, int(dilation), c_in
        self.w = np.ascontiguousarray(kernel.reshape(k * c_in, f), np.float32)
        self.b = np.asarray(bias, np.float32)
        self.history = (k - 1) * self.d
        self.size = self.history + max_push
        # Tap j of the output at new step i reads input (i - (k-1-j)·d).
        self.taps = -(k - 1 - np.arange(k)) * self.d
        self.reset()

    def reset(self):
        # Zeros: the stream's first outputs see what the Keras conv's zero padding gives.
        self.ring = np.zeros((self.size, self.c_in), np.float32)
        self.pos = 0  # ring index of the next input

    def __call__(self, x):
        m = len(x)
        idx = (self.pos + np.arange(m)) % self.size
        self.ring[idx] = x
        rows = (idx[:, None] + self.taps[None, :]) % self.size  # (m, k)
        cols = self.ring[rows].reshape(m, self.k * self.c_in)
        self.pos = (self.pos + m) % self.size
        return cols @ self.w + self.b


def _weight_norm_kernel(conv):
    """``g · v / ‖v‖`` in float32 from the float32 variables (``conv.kernel()`` would round
    it to float16 under mixed_float16; the engine computes in float32 throughout)."""
    v = np.asarray(conv.v, np.float32)
    g = np.asarray(conv.g, np.float32)
    return v * (g / np.sqrt(np.sum(np.square(v), axis=(0, 1))))


def _bn_affine(layer):
    """``x * scale + shift`` equal to a BatchNormalization layer at inference."""
    mean = np.asarray(layer.moving_mean, np.float32)
    var = np.asarray(layer.moving_variance, np.float32)
    inv = (1.0 / np.sqrt(var + np.float32(layer.epsilon))).astype(np.float32)
    if layer.scale:
        inv = inv * np.asarray(layer.gamma, np.float32)
    shift = -mean * inv
    if layer.center:
        shift = shift + np.asarray(layer.beta, np.float32)
    return inv.astype(np.float32), shift.astype(np.float32)


def _relu(x):
    return np.maximum(x, 0, out=x)


class IncrementalEngine:
    """Exact streaming inference of a streamable TCN: O(one column) per layer per step.

    ``max_push`` bounds the steps handled in one piece (bigger pushes are split);
    it sizes the conv ring buffers.
    """

    def __init__(self, model, max_push=256):
        if not is_streamable(model):
            raise NotStreamableError(
                f"{model.name}: not a streamable TCN (built without streamable=True): its "
                "input_norm normalises per time step and its decoder's outputs see the "
                "window's zero padding, so per-layer state cannot reproduce its windows; "
                "use the windowed engine, or build/fine-tune a streamable model "
                "(presets *-stream)")
        self.model = model
        self.max_push = int(max_push)
        self.input_len = int(model.input_shape[1])
        self.n_features = int(model.input_shape[2])
        self.seq_len = head_length(model)
        self.norm = _bn_affine(model.get_layer("input_norm"))
        self.blocks = []
        for block in decoder_blocks(model):
            convs = [_Conv(_weight_norm_kernel(c), np.asarray(c.bias, np.float32),
                           c.dilation_rate, self.max_push) for c in (block.conv1, block.conv2)]
            residual = None
            if block.residual is not None:
                kernel, bias = (np.asarray(w, np.float32) for w in block.residual.get_weights())
                residual = (kernel[0], bias)
            self.blocks.append((convs, residual))
        # A fine-tuning ensemble has heads member0_head_conv, member1_..., averaged into
        # "prediction"; a single model has one head with the plain names.
        names = {layer.name for layer in model.layers}
        n = 0
        while f"member{n}_head_conv" in names:
            n += 1
        self.heads = [self._head(model, prefix)
                      for prefix in ([f"member{i}_" for i in range(n)] or [""])]
        # Each decoder output h meets every head conv twice: as the left tap (h @ k0) of
        # the pair it starts and the right tap (h @ k1) of the pair it ends.
        self.head_w = np.ascontiguousarray(np.concatenate([hd[0] for hd in self.heads], axis=1))
        self.head_c = self.heads[0][1].shape[0]
        self.n_targets = self.heads[0][5].shape[0]
        self.reset()

    @staticmethod
    def _head(model, prefix):
        """``(taps kernel [k0 | k1], conv bias, dense w, dense b, prediction w, b)``."""
        conv = model.get_layer(f"{prefix}head_conv")
        kernel, conv_b = (np.asarray(w, np.float32) for w in conv.get_weights())
        if kernel.shape[0] != 2 or conv.dilation_rate != (1,):
            raise NotStreamableError(f"{model.name}: {conv.name} is not the reference k=2 conv")
        dense_w, dense_b = (np.asarray(w, np.float32)
                            for w in model.get_layer(f"{prefix}head_dense").get_weights())
        pred_w, pred_b = (np.asarray(w, np.float32)
                          for w in model.get_layer(f"{prefix}prediction").get_weights())
        return (np.concatenate([kernel[0], kernel[1]], axis=1), conv_b, dense_w, dense_b,
                pred_w, pred_b)

    def reset(self):
        """Forget the stream: the next window ends ``input_len`` steps from now."""
        self.n_steps = 0
        for convs, _ in self.blocks:
            for c in convs:
                c.reset()
        # Tap products of the last seq_len decoder outputs, oldest first (a ring).
        self._taps = np.zeros((self.seq_len + self.max_push, self.head_w.shape[1]), np.float32)
        self._tap_pos = 0

    def state_size(self):
        """Floats held between pushes (conv histories + head taps)."""
        return (sum(c.history * c.c_in for convs, _ in self.blocks for c in convs)
                + self.seq_len * self.head_w.shape[1])

    def push(self, steps):
        steps = _check_steps(steps, self.n_features)
        ends, outs = [], []
        for i in range(0, len(steps), self.max_push):
            e, o = self._push(steps[i:i + self.max_push])
            ends.append(e)
            outs.append(o)
        if not ends:
            return np.zeros((0,), np.int64), np.zeros((0, self.n_targets), np.float32)
        return np.concatenate(ends), np.concatenate(outs)

    def _push(self, x):
        m = len(x)
        scale, shift = self.norm
        h = x * scale + shift
        for (conv1, conv2), residual in self.blocks:
            y = _relu(conv2(_relu(conv1(h))))
            skip = h if residual is None else h @ residual[0] + residual[1]
            h = _relu(y + skip)
        taps = h @ self.head_w  # (m, heads·2C): per head [h @ k0, h @ k1]
        size = len(self._taps)
        idx = (self._tap_pos + np.arange(m)) % size
        self._taps[idx] = taps
        self._tap_pos = (self._tap_pos + m) % size
        first = self.n_steps
        self.n_steps += m
        # New steps that end a full window: index >= input_len - 1.
        done = np.arange(first, first + m)
        done = done[done >= self.input_len - 1]
        if not len(done):
            return done, np.zeros((0, self.n_targets), np.float32)
        # Ring rows of each window's seq_len decoder outputs, oldest first.
        last = (idx[done - first])[:, None]
        rows = (last - self.seq_len + 1 + np.arange(self.seq_len)[None, :]) % size
        t_all = self._taps[rows]  # (j, S, heads·2C)
        c = self.head_c
        out = np.zeros((len(done), self.n_targets), np.float32)
        for k, (_, conv_b, dense_w, dense_b, pred_w, pred_b) in enumerate(self.heads):
            t = t_all[:, :, 2 * c * k:2 * c * (k + 1)]
            # The reference head pads one zero step on each side: S + 1 conv outputs.
            conv = np.empty((len(done), self.seq_len + 1, c), np.float32)
            conv[:, 0] = t[:, 0, c:]
            conv[:, 1:-1] = t[:, :-1, :c] + t[:, 1:, c:]
            conv[:, -1] = t[:, -1, :c]
            conv += conv_b
            flat = _relu(conv).reshape(len(done), -1)
            out += _relu(flat @ dense_w + dense_b) @ pred_w + pred_b
        return done, out / len(self.heads)


def _check_steps(steps, n_features):
    steps = np.asarray(steps, np.float32)
    if steps.ndim == 1:
        steps = steps[:, None] if n_features == 1 else steps[None, :]
    if steps.ndim != 2 or steps.shape[1] != n_features:
        raise ValueError(f"feature steps of shape {steps.shape}; the model takes "
                         f"(n, {n_features})")
    return steps


def make_engine(model, engine="auto", **kwargs):
    """``"incremental"``, ``"windowed"``, or ``"auto"`` (incremental when the model allows)."""
    if engine == "auto":
        engine = "incremental" if is_streamable(model) else "windowed"
    if engine == "incremental":
        return IncrementalEngine(model, **{k: v for k, v in kwargs.items() if k == "max_push"})
    if engine == "windowed":
        return WindowedEngine(model, **{k: v for k, v in kwargs.items() if k == "batch_size"})
    raise ValueError(f"engine must be 'auto', 'incremental' or 'windowed', got {engine!r}")
