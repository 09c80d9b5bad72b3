"""The TCN on an accelerator under any Keras backend: speed and mixed-precision numerics.

    KERAS_BACKEND=jax python benchmarks/bench_gpu_backend.py --preset paper

``labquake_tf.models`` is pure Keras, so the same model runs where TensorFlow is not
installed (the lent GPU machines carry JAX and PyTorch, not TensorFlow 2.16). For each
precision this trains the preset on a learnable synthetic task (the target is a causal
moving average of the input, inside the receptive field) with the optimizer of
``training.make_optimizer`` and reports samples/s after warm-up, the first and last
loss, whether any loss was non-finite, and the dtypes of weights and outputs. With
``--frozen-blocks K`` the first K decoder blocks and ``input_norm`` are frozen, as in
fine-tuning, and the trainable fraction is reported. Prints one JSON line.
"""

import argparse
import json
import math
import time

import keras
import numpy as np

from labquake_tf.models import PRESETS, build_from_preset, decoder_blocks


def make_optimizer(steps_per_epoch, learning_rate=1e-3, period=50):
    # The optimizer of training.make_optimizer (default TrainConfig), rebuilt here because
    # that module imports TensorFlow for its data helpers.
    schedule = keras.optimizers.schedules.CosineDecayRestarts(
        learning_rate, first_decay_steps=period * steps_per_epoch, t_mul=1.0, m_mul=1.0)
    return keras.optimizers.AdamW(learning_rate=schedule, weight_decay=1e-4,
                                  global_clipnorm=1.0)


def task(batch, seq_len, n_batches, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n_batches, batch, seq_len, 1)).astype("float32")
    # Target: mean of the last 16 steps, which every preset's receptive field covers.
    y = x[:, :, -16:, 0].mean(axis=-1, keepdims=True) * 4.0
    return x, y


def run(preset, precision, batch, steps, warmup, frozen_blocks):
    keras.config.set_dtype_policy(precision)
    keras.utils.set_random_seed(0)
    model = build_from_preset(preset)
    if frozen_blocks:
        for layer in [model.get_layer("input_norm"), *decoder_blocks(model)[:frozen_blocks]]:
            layer.trainable = False
    model.compile(optimizer=make_optimizer(steps), loss="mse")
    x, y = task(batch, PRESETS[preset]["seq_len"], n_batches=8)
    losses = []
    for i in range(warmup):
        losses.append(float(model.train_on_batch(x[i % 8], y[i % 8])))
    start = time.perf_counter()
    for i in range(steps):
        # float() waits for the step: JAX and torch dispatch asynchronously.
        losses.append(float(model.train_on_batch(x[i % 8], y[i % 8])))
    seconds = time.perf_counter() - start
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    total = model.count_params()
    out = model.predict_on_batch(x[0][:2])
    # Under mixed_float16 Keras wraps the optimizer in a LossScaleOptimizer, which skips
    # the steps whose scaled gradients overflow while it lowers the scale.
    inner = getattr(model.optimizer, "inner_optimizer", None)
    scaling = {} if inner is None else {
        "skipped_steps": len(losses) - int(inner.iterations),
        "final_loss_scale": float(model.optimizer.dynamic_scale)}
    return {
        "precision": precision, "samples_per_s": round(steps * batch / seconds, 1),
        "step_ms": round(1000 * seconds / steps, 2),
        "loss_first": round(losses[0], 4), "loss_last": round(float(np.mean(losses[-10:])), 4),
        "nonfinite_losses": sum(not math.isfinite(v) for v in losses),
        "loss_curve": [round(v, 4) for v in losses[::max(1, len(losses) // 10)]], **scaling,
        "params": total, "trainable_fraction": round(trainable / total, 4),
        "weight_dtypes": sorted({w.dtype for w in model.weights}),
        "compute_dtype": model.get_layer("decoder_block_0").compute_dtype,
        "output_dtype": str(out.dtype),
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="paper", choices=sorted(PRESETS))
    p.add_argument("--precisions", default="float32,mixed_float16,mixed_bfloat16")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=50, help="timed steps")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps (compilation)")
    p.add_argument("--frozen-blocks", type=int, default=0)
    args = p.parse_args(argv)
    result = {"backend": keras.backend.backend(), "keras": keras.__version__,
              "preset": args.preset, "batch": args.batch, "frozen_blocks": args.frozen_blocks,
              "runs": [run(args.preset, precision, args.batch, args.steps, args.warmup,
                           args.frozen_blocks)
                       for precision in args.precisions.split(",")]}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
