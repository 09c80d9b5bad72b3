"""The TCN on an accelerator: Keras on JAX against PyTorch, same shape, batch and optimizer.

    python benchmarks/bench_gpu.py --preset paper                 # a GPU machine
    python benchmarks/bench_gpu.py --preset tiny --device cpu --steps 3   # the CPU path
    python benchmarks/bench_gpu.py --preset paper --lowering --device cpu # XLA's view

Runs where TensorFlow is not installed (the lent GPU machines carry JAX and PyTorch):
``labquake_tf.models`` is pure Keras, so the project's own model trains under the JAX
backend; the README says how to carry keras, namex and optree there. One run times:

* Keras/JAX in each of ``--precisions`` (float32, mixed_float16, mixed_bfloat16): the
  preset trained on a learnable synthetic task (the target is a causal moving average
  inside the receptive field) with AdamW, global clip 1.0, MSE;
* PyTorch (``benchmarks/torch_tcn.py``, the same architecture) in fp32 and bf16
  autocast, in a child process, with the same batch, AdamW and clipping.

Every clock stops only after the device is done (``jax.block_until_ready`` on the
weights, ``torch.cuda.synchronize``): an unsynchronised JAX ``fit`` once "ran" at
900 TFLOP/s. Reported per run: compile time (the first step, tracing and XLA compile
included), samples/s, achieved TFLOP/s (model FLOPs: every conv tap, 3x forward for
trained layers) and its share of the chip's peak for that precision (``PEAK_TFLOPS``),
first/last loss, non-finite losses and, under mixed_float16, the loss-scale skips.
float32 is true float32 on both sides (no TF32) unless ``--tf32``.

``--lowering``: XLA's view of each dilated causal conv of the preset (forward and
backward of one ``WeightNormConv1D``, jitted alone): compile seconds, HLO op counts
and the largest pad, with and without dropping the taps that read only padding;
``--hlo-dir`` keeps the HLO text. Then the whole training step's compile time.
The last line is JSON.
"""

import argparse
import json
import math
import os
import pathlib
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

PEAK_TFLOPS = {
    # Dense tensor-core peaks (no sparsity), vendor datasheets, SXM parts; TF32 is what
    # float32 matmuls get only when TF32 is allowed (--tf32).
    "H200": {"float32": 67.0, "tf32": 494.7, "bfloat16": 989.4, "float16": 989.4},
    "H100": {"float32": 67.0, "tf32": 494.7, "bfloat16": 989.4, "float16": 989.4},
    "A100": {"float32": 19.5, "tf32": 156.0, "bfloat16": 312.0, "float16": 312.0},
    "L4": {"float32": 30.3, "tf32": 60.0, "bfloat16": 121.0, "float16": 121.0},
}
PRECISION_DTYPE = {"float32": "float32", "mixed_float16": "float16",
                   "mixed_bfloat16": "bfloat16", "fp32": "float32", "bf16": "bfloat16"}


def peak_tflops(device_name, precision, tf32=False):
    """The chip's dense peak for ``precision``, or None for a chip not in the table."""
    dtype = PRECISION_DTYPE[precision]
    if dtype == "float32" and tf32:
        dtype = "tf32"
    for chip, peaks in PEAK_TFLOPS.items():
        if chip.lower() in str(device_name).lower():
            return peaks[dtype]
    return None


def train_flops(seq_len, filters, kernel_size, blocks, batch, n_features=1, n_targets=1,
                frozen_blocks=0, **_):
    """Model FLOPs of one training step (multiply-adds count 2): every conv tap, as the
    architecture defines it; 3x forward for trained layers (forward, input and weight
    gradients), 1x for the frozen leading blocks."""
    def conv(t, c_in, c_out, k):
        return 2 * batch * t * k * c_in * c_out

    total = 0
    for i in range(blocks):
        c_in = n_features if i == 0 else filters
        fwd = conv(seq_len, c_in, filters, kernel_size) + conv(seq_len, filters, filters,
                                                               kernel_size)
        if c_in != filters:
            fwd += conv(seq_len, c_in, filters, 1)  # the residual 1x1
        total += fwd * (1 if i < frozen_blocks else 3)
    head = (conv(seq_len + 1, filters, 64, 2) + 2 * batch * 64 * (seq_len + 1) * 128
            + 2 * batch * 128 * n_targets)
    return total + 3 * head


def summarize(name, seconds, steps, batch, flops_per_step, device, precision, tf32=False):
    """samples/s, TFLOP/s and share of peak for ``steps`` steps in ``seconds``."""
    achieved = flops_per_step * steps / seconds / 1e12
    peak = peak_tflops(device, precision, tf32)
    return {"name": name, "samples_per_s": round(steps * batch / seconds, 1),
            "step_ms": round(1000 * seconds / steps, 2), "tflops": float(f"{achieved:.4g}"),
            "peak_tflops": peak, "share_of_peak": None if peak is None else round(
                achieved / peak, 4)}


def task(batch, seq_len, n_batches=8, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n_batches, batch, seq_len, 1)).astype("float32")
    # Target: mean of the last 16 steps, which every preset's receptive field covers.
    y = x[:, :, -16:, 0].mean(axis=-1, keepdims=True) * 4.0
    return x, y


def make_optimizer(steps_per_epoch, learning_rate=1e-3, period=50):
    # training.make_optimizer's AdamW on its cosine schedule, rebuilt here because that
    # module imports TensorFlow for its data helpers.
    import keras

    schedule = keras.optimizers.schedules.CosineDecayRestarts(
        learning_rate, first_decay_steps=period * steps_per_epoch, t_mul=1.0, m_mul=1.0)
    return keras.optimizers.AdamW(learning_rate=schedule, weight_decay=1e-4,
                                  global_clipnorm=1.0)


def block_on(model):
    """Wait until the device has finished every queued update of ``model``."""
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        jax.block_until_ready([v.value for v in model.variables])
    elif backend == "torch":
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()
    else:
        for v in model.variables:
            v.numpy()


def device_name():
    import keras

    if keras.backend.backend() == "jax":
        import jax

        d = jax.devices()[0]
        return f"{d.platform}:{getattr(d, 'device_kind', '')}"
    return keras.distribution.list_devices()[0]


def keras_run(args, precision):
    import keras
    import numpy as np

    from labquake_tf.models import PRESETS, build_from_preset, decoder_blocks

    keras.config.set_dtype_policy(precision)
    keras.utils.set_random_seed(0)
    model = build_from_preset(args.preset)
    if args.frozen_blocks:
        for layer in [model.get_layer("input_norm"),
                      *decoder_blocks(model)[:args.frozen_blocks]]:
            layer.trainable = False
    model.compile(optimizer=make_optimizer(args.steps), loss="mse", jit_compile=True)
    x, y = task(args.batch, PRESETS[args.preset]["seq_len"])
    start = time.perf_counter()
    losses = [float(model.train_on_batch(x[0], y[0]))]
    block_on(model)
    compile_s = time.perf_counter() - start
    for i in range(1, args.warmup):
        losses.append(float(model.train_on_batch(x[i % 8], y[i % 8])))
    block_on(model)
    start = time.perf_counter()
    for i in range(args.steps):
        losses.append(float(model.train_on_batch(x[i % 8], y[i % 8])))
    block_on(model)
    seconds = time.perf_counter() - start
    flops = train_flops(**PRESETS[args.preset], batch=args.batch,
                        frozen_blocks=args.frozen_blocks)
    inner = getattr(model.optimizer, "inner_optimizer", None)
    # Under mixed_float16 Keras wraps the optimizer in a LossScaleOptimizer, which skips
    # the steps whose scaled gradients overflow while it lowers the scale.
    scaling = {} if inner is None else {
        "skipped_steps": len(losses) - int(inner.iterations),
        "final_loss_scale": float(model.optimizer.dynamic_scale)}
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    return {**summarize(f"keras-{keras.backend.backend()} {precision}", seconds, args.steps,
                        args.batch, flops, args.device_name, precision, args.tf32),
            "precision": precision, "compile_s": round(compile_s, 2),
            "loss_first": round(losses[0], 4), "loss_last": round(float(np.mean(losses[-10:])), 4),
            "nonfinite_losses": sum(not math.isfinite(v) for v in losses), **scaling,
            "params": model.count_params(),
            "trainable_fraction": round(trainable / model.count_params(), 4),
            "weight_dtypes": sorted({w.dtype for w in model.weights}),
            "compute_dtype": model.get_layer("decoder_block_0").compute_dtype}


def torch_run(args, amp):
    """``torch_tcn.py`` in a child process: fp32 (``amp=None``) or ``"bfloat16"`` autocast."""
    from labquake_tf.models import PRESETS

    p = PRESETS[args.preset]
    cmd = [args.torch_python, str(HERE / "torch_tcn.py"), "--seq-len", str(p["seq_len"]),
           "--filters", str(p["filters"]), "--kernel", str(p["kernel_size"]),
           "--blocks", str(p["blocks"]), "--batch", str(args.batch), "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--repeats", "1",
           "--device", "cuda" if args.device == "gpu" else "cpu",
           "--dropout", str(p["dropout"])]
    if amp:
        cmd += ["--amp", "--amp-dtype", amp]
    if not args.tf32:
        cmd += ["--no-tf32"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=args.timeout)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    precision = "bf16" if amp else "fp32"
    seconds = args.steps * args.batch / result["samples_per_s"]
    flops = train_flops(**p, batch=args.batch)
    return {**summarize(f"torch {precision}", seconds, args.steps, args.batch, flops,
                        args.device_name, precision, args.tf32),
            "precision": precision, "compile_s": result.get("first_step_s"),
            "framework": result["framework"]}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="paper")
    p.add_argument("--device", choices=("gpu", "cpu"), default="gpu")
    p.add_argument("--precisions", default="float32,mixed_float16,mixed_bfloat16")
    p.add_argument("--torch", default="fp32,bf16", help="PyTorch runs ('' for none)")
    p.add_argument("--torch-python", default=sys.executable,
                   help="interpreter with torch (default: this one)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=30, help="timed steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps, the first compiles")
    p.add_argument("--frozen-blocks", type=int, default=0)
    p.add_argument("--tf32", action="store_true", help="let float32 matmuls use TF32")
    p.add_argument("--timeout", type=float, default=600, help="per PyTorch run (s)")
    p.add_argument("--lowering", action="store_true", help="XLA's view of the dilated convs")
    p.add_argument("--hlo-dir", default=None, help="--lowering: write the HLO text here")
    args = p.parse_args(argv)
    setup_backend(args)
    if args.lowering:
        import gpu_lowering

        result = gpu_lowering.study(args.preset, args.batch, args.hlo_dir)
    else:
        args.device_name = device_name()
        result = {"preset": args.preset, "batch": args.batch, "device": args.device_name,
                  "runs": [keras_run(args, pr) for pr in args.precisions.split(",") if pr]
                  + [torch_run(args, None if t == "fp32" else "bfloat16")
                     for t in args.torch.split(",") if t]}
        result.update(compare(result["runs"]))
    print(json.dumps(result))
    return 0


def setup_backend(args):
    """Keras on JAX, on the asked device, float32 without TF32 unless ``--tf32``."""
    os.environ["KERAS_BACKEND"] = "jax"
    # JAX would take 75 % of the GPU's memory up front, leaving PyTorch's child short.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    if args.device == "cpu":
        os.environ["JAX_PLATFORMS"] = "cpu"
    import jax

    if not args.tf32:
        jax.config.update("jax_default_matmul_precision", "highest")
    if args.device == "gpu" and jax.devices()[0].platform != "gpu":
        raise SystemExit(f"bench_gpu: no GPU visible to JAX ({jax.devices()}); "
                         "--device cpu runs the CPU path")


def compare(runs):
    """Each Keras run's samples/s over the best PyTorch run of the same family."""
    by = {r["name"]: r["samples_per_s"] for r in runs}
    torch_fp32, torch_bf16 = by.get("torch fp32"), by.get("torch bf16")
    out = {}
    for r in runs:
        if r["name"].startswith("keras"):
            peer = torch_fp32 if r["precision"] == "float32" else torch_bf16
            if peer:
                out[f"{r['precision']}_vs_torch"] = round(r["samples_per_s"] / peer, 3)
    return out


if __name__ == "__main__":
    raise SystemExit(main())
