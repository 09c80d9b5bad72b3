"""Streaming through a stateless server: the ``serving_step`` signature and its client.

A streamable TCN's export (``build_tcn(streamable=True)``) carries ``serving_step``:

* inputs: ``ae_features`` ``[batch, 1, n_features]``, one new raw log10-variance
  step; ``state_I_conv1`` / ``state_I_conv2`` ``[batch, (k-1)·d_I, channels]``, the
  last inputs of decoder block I's two dilated convs; ``state_head``
  ``[batch, seq_len, filters]``, the last seq_len decoder outputs;
* outputs: each target in physical units, and the same ``state_*`` names updated.

The server keeps nothing: ``StepClient`` holds the states and feeds each response's
states back with the next step. All-zero states are the start of a stream (the
convs' zero padding); from the ``warmup``-th step on (the model's input length) the
outputs equal ``serving_default`` on the window of the last input-length steps.
"""

import numpy as np

STEP_SIGNATURE = "serving_step"
HEAD_STATE = "state_head"


def state_specs(model):
    """``{name: (steps, channels)}`` of the states, in order."""
    from labquake_tf.models import decoder_blocks, head_length

    specs = {}
    channels = int(model.input_shape[-1])
    for i, block in enumerate(decoder_blocks(model)):
        history = (block.kernel_size - 1) * block.dilation_rate
        specs[f"state_{i}_conv1"] = (history, channels)
        specs[f"state_{i}_conv2"] = (history, block.filters)
        channels = block.filters
    specs[HEAD_STATE] = (head_length(model), channels)
    return specs


def step_endpoint(model, preprocessor):
    """``(fn, input_signature)`` for ``ExportArchive.add_endpoint``: one step of the
    streamable ``model`` from raw features to physical units, states in and out."""
    import keras
    import tensorflow as tf

    from labquake_tf.models import decoder_blocks, is_streamable

    if not is_streamable(model):
        raise ValueError(f"{model.name}: serving_step needs a streamable TCN")
    specs = state_specs(model)
    n_features = int(model.input_shape[-1])
    signature = {"ae_features": tf.TensorSpec([None, 1, n_features], tf.float32,
                                              name="ae_features")}
    signature.update({n: tf.TensorSpec([None, *shape], tf.float32, name=n)
                      for n, shape in specs.items()})
    blocks = decoder_blocks(model)
    norm = model.get_layer("input_norm")
    # A sub-model, not the layers after the crop as a chain: an ensemble's heads branch.
    head = keras.Model(model.get_layer("history_crop").output, model.outputs[0])
    dtype = model.inputs[0].dtype

    def conv(layer, h, state, new, name):
        buf = tf.concat([tf.cast(state, h.dtype), h], axis=1)  # (B, (k-1)d + 1, C)
        new[name] = tf.cast(buf[:, 1:], tf.float32)
        taps = buf[:, ::layer.dilation_rate]  # tap j reads step t - (k-1-j)·d
        y = tf.einsum("bkc,kcf->bf", taps, tf.cast(layer.kernel(), h.dtype))
        return y[:, None] + tf.cast(layer.bias, h.dtype)

    def step(inputs):
        x = preprocessor.scale_features(inputs["ae_features"])
        h = norm(tf.cast(x, dtype), training=False)
        new = {}
        for i, block in enumerate(blocks):
            h = tf.cast(h, block.compute_dtype)
            y = tf.nn.relu(conv(block.conv1, h, inputs[f"state_{i}_conv1"], new,
                                f"state_{i}_conv1"))
            y = tf.nn.relu(conv(block.conv2, y, inputs[f"state_{i}_conv2"], new,
                                f"state_{i}_conv2"))
            skip = h if block.residual is None else block.residual(h)
            h = tf.nn.relu(y + skip)
        window = tf.concat([tf.cast(inputs[HEAD_STATE][:, 1:], h.dtype), h], axis=1)
        new[HEAD_STATE] = tf.cast(window, tf.float32)
        y = preprocessor.unscale_targets(tf.cast(head(window, training=False), tf.float32))
        return {**{t: y[:, i] for i, t in enumerate(preprocessor.target_names)}, **new}

    return step, [signature]


class StepClient:
    """Drive an export's ``serving_step`` through a ``serving.Client`` (REST, or any
    client with ``signature`` and ``predict``), holding the layer states here.

        stepper = StepClient(Client("http://localhost:8501", "p4581"))
        for row in feature_rows:           # raw log10-variance, one step at a time
            out = stepper.step(row)        # None during the warm-up, else {target: value}
    """

    def __init__(self, client, signature_name=STEP_SIGNATURE):
        self.client, self.signature_name = client, signature_name
        inputs, outputs = client.signature(signature_name)
        if "ae_features" not in inputs or HEAD_STATE not in inputs:
            raise ValueError(f"{getattr(client, 'model', client)}: signature {signature_name!r} "
                             f"has inputs {sorted(inputs)}, not a labquake serving_step")
        self.shapes = {n: tuple(s[1:]) for n, s in inputs.items() if n != "ae_features"}
        self.n_features = int(inputs["ae_features"][-1])
        self.targets = [n for n in outputs if n not in self.shapes]
        # The model's input length: the head's steps plus every conv's history.
        self.warmup = self.shapes[HEAD_STATE][0] + sum(
            s[0] for n, s in self.shapes.items() if n != HEAD_STATE)
        self.reset()

    def reset(self):
        """Start a new stream (zero states)."""
        self.states = {n: np.zeros((1, *s), np.float32) for n, s in self.shapes.items()}
        self.n_steps = 0

    def step(self, features):
        """One raw log10-variance step ``(n_features,)``; the prediction once warmed up."""
        x = np.asarray(features, np.float32).reshape(1, 1, -1)
        if x.shape[-1] != self.n_features or not np.all(np.isfinite(x)):
            raise ValueError(f"feature step {np.asarray(features).ravel()[:8]}: the model takes "
                             f"{self.n_features} finite value(s)")
        out = self.client.predict({"ae_features": x, **self.states},
                                  signature_name=self.signature_name, format="columnar")
        self.states = {n: np.asarray(out[n], np.float32).reshape(1, *s)
                       for n, s in self.shapes.items()}
        self.n_steps += 1
        if self.n_steps < self.warmup:
            return None
        return {t: float(np.asarray(out[t]).ravel()[0]) for t in self.targets}
