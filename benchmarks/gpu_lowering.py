"""XLA's view of the TCN's dilated causal convs, for ``bench_gpu.py --lowering``.

For each block of a preset, one ``WeightNormConv1D`` (the block's second conv:
filters -> filters) is jitted alone, forward and backward, as a training step runs
it, under Keras' JAX backend on whatever device JAX sees (CPU where no GPU is lent).
Per dilation, with every tap (the formulation before taps reading only causal
padding were dropped) and with the live taps alone, it reports lower + compile
seconds, the HLO ops that matter (convolutions, pads, dots, concatenates) and the
largest pad. Then the whole training step of the preset, both ways.
"""

import re
import time

STUDIED_IMPLS = ("conv", "im2col")


def conv_case(filters, kernel_size, dilation, seq_len, batch, impl, prune, hlo_dir=None):
    import jax
    import keras
    import numpy as np

    from labquake_tf.models import WeightNormConv1D

    layer = WeightNormConv1D(filters, kernel_size, dilation_rate=dilation, conv_impl=impl)
    layer.build((batch, seq_len, filters))
    if not prune:
        layer.live_taps = lambda steps: 0
    x = np.random.default_rng(0).normal(size=(batch, seq_len, filters)).astype("float32")
    trainable = [v.value for v in layer.trainable_variables]

    def loss(weights, x):
        y, _ = layer.stateless_call(weights, [], x)
        return keras.ops.mean(keras.ops.square(y))

    # Gradients for the weights and the input, as an inner block of a training step needs.
    step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
    start = time.perf_counter()
    lowered = step.lower(trainable, x)
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start
    hlo = compiled.as_text()
    if hlo_dir:
        name = f"d{dilation}-{impl}-{'live' if prune else 'all'}-taps.hlo.txt"
        (hlo_dir / name).write_text(hlo)
    jax.block_until_ready(compiled(trainable, x))
    start = time.perf_counter()
    jax.block_until_ready(compiled(trainable, x))
    return {"dilation": dilation, "impl": impl, "taps": "live" if prune else "all",
            "live_taps": kernel_size - (layer.live_taps(seq_len) if prune else 0),
            "compile_s": round(compile_s, 3),
            "run_ms": round(1000 * (time.perf_counter() - start), 2), **hlo_stats(hlo)}


def hlo_stats(hlo):
    """Counts of the ops that decide a conv's lowering, and the largest pad, in HLO text."""
    ops = {op: len(re.findall(rf"= \S+ {op}\(", hlo))
           for op in ("convolution", "pad", "dot", "concatenate", "fusion")}
    pads = [int(lo) for lo in re.findall(r"padding=(?:0_0x)*(\d+)_\d+", hlo)]
    return {"hlo_ops": ops, "max_pad": max(pads, default=0), "hlo_chars": len(hlo)}


def step_compile(preset, batch, prune):
    """Seconds to compile and run the first training step of the whole preset."""
    import keras
    import numpy as np

    from labquake_tf.models import PRESETS, WeightNormConv1D, build_from_preset

    keras.utils.set_random_seed(0)
    model = build_from_preset(preset)
    if not prune:
        for layer in model._flatten_layers():
            if isinstance(layer, WeightNormConv1D):
                layer.live_taps = lambda steps: 0
    model.compile(optimizer="adamw", loss="mse", jit_compile=True)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch, PRESETS[preset]["seq_len"], 1)).astype("float32")
    y = rng.normal(size=(batch, 1)).astype("float32")
    start = time.perf_counter()
    model.train_on_batch(x, y)
    first = time.perf_counter() - start
    start = time.perf_counter()
    model.train_on_batch(x, y)
    return {"taps": "live" if prune else "all", "first_step_s": round(first, 2),
            "next_step_s": round(time.perf_counter() - start, 3)}


def study(preset, batch, hlo_dir=None):
    import pathlib

    import jax

    from labquake_tf.models import PRESETS

    p = PRESETS[preset]
    if hlo_dir:
        hlo_dir = pathlib.Path(hlo_dir)
        hlo_dir.mkdir(parents=True, exist_ok=True)
    convs = [conv_case(p["filters"], p["kernel_size"], 2 ** i, p["seq_len"], batch, impl, prune,
                       hlo_dir)
             for i in range(p["blocks"]) for impl in STUDIED_IMPLS for prune in (False, True)]
    steps = [step_compile(preset, batch, prune) for prune in (False, True)]
    return {"preset": preset, "batch": batch, "device": str(jax.devices()[0]),
            "convs": convs, "training_step": steps}
