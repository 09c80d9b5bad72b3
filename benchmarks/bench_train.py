"""Training speed of the TCN: samples/s of one optimizer step (forward, backward, AdamW).

    python benchmarks/bench_train.py --preset small --torch-python /path/to/torch-venv/bin/python
    python benchmarks/bench_train.py --filters 128 --seq-len 128 --kernel 8 --blocks 5 ...  # medium
    python benchmarks/bench_train.py --preset paper --batch 4 --steps 1 --warmup 1 --repeats 1

Measures the step ``labquake pretrain`` runs (``training.compile_model``: MSE, global
gradient clipping, AdamW on the cosine schedule) on one in-memory batch, so input I/O is
not timed; the first ``--warmup`` steps (tracing, XLA compilation) are excluded. Every
path is timed: each ``WeightNormConv1D`` implementation (``--conv-impls``), eager and
XLA-compiled (``paths_samples_per_s``), then the default (``keras_samples_per_s``: what
``labquake pretrain`` picks with no flag, ``auto_conv_impl`` / ``auto_jit_compile``).
The rules in ``models.layers.choose_conv_impl`` and ``training.trainer.choose_jit_compile``
come from these numbers. With ``--torch-python`` the same model and step in PyTorch
(``benchmarks/torch_tcn.py``) run in that interpreter: ``default_over_torch`` and
``best_path_over_torch``. Prints one JSON line. Timings on a shared machine vary by
several x; compare ratios from one run.
"""

import argparse
import json
import os
import pathlib
import subprocess
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from labquake_tf.models import PRESETS, build_tcn, decoder_blocks  # noqa: E402
from labquake_tf.models.layers import choose_conv_impl  # noqa: E402
from labquake_tf.training.trainer import choose_jit_compile  # noqa: E402
from labquake_tf.training.config import TrainConfig  # noqa: E402
from labquake_tf.training.strategy import set_precision  # noqa: E402
from labquake_tf.training.trainer import compile_model  # noqa: E402

TORCH_SCRIPT = pathlib.Path(__file__).with_name("torch_tcn.py")


def model_kwargs(args):
    overrides = {"seq_len": args.seq_len, "filters": args.filters,
                 "kernel_size": args.kernel, "blocks": args.blocks, "dropout": args.dropout}
    kwargs = {**PRESETS[args.preset], **{k: v for k, v in overrides.items() if v is not None}}
    return {**kwargs, "n_features": args.n_features, "n_targets": args.n_targets}


def keras_step(kwargs, args, jit_compile, conv_impl="auto"):
    """A compiled model and its warmed-up ``time_it(steps) -> samples/s``."""
    keras.utils.set_random_seed(0)
    model = build_tcn(**kwargs, conv_impl=conv_impl)
    if args.frozen_decoder:
        for layer in [model.get_layer("input_norm"), *decoder_blocks(model)]:
            layer.trainable = False
    compile_model(model, TrainConfig(jit_compile=jit_compile), steps_per_epoch=100)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.batch, kwargs["seq_len"], kwargs["n_features"])).astype("float32")
    y = rng.normal(size=(args.batch, kwargs["n_targets"])).astype("float32")
    data = tf.data.Dataset.from_tensors((x, y)).repeat().prefetch(2)
    model.fit(data, steps_per_epoch=args.warmup, epochs=1, verbose=0, shuffle=False)

    def time_it():
        start = time.perf_counter()
        model.fit(data, steps_per_epoch=args.steps, epochs=1, verbose=0, shuffle=False)
        return args.steps * args.batch / (time.perf_counter() - start)

    return time_it


def round_robin(timers, repeats):
    """Best samples/s of each timer over ``repeats`` rounds, the timers interleaved in
    each round: on a shared machine, load that comes and goes then hits every path alike."""
    best = dict.fromkeys(timers, 0.0)
    for _ in range(repeats):
        for name, time_it in timers.items():
            best[name] = max(best[name], time_it())
    return {name: round(v, 1) for name, v in best.items()}


def torch_samples_per_s(kwargs, args, threads):
    command = [args.torch_python, str(TORCH_SCRIPT), "--seq-len", kwargs["seq_len"],
               "--n-features", kwargs["n_features"], "--n-targets", kwargs["n_targets"],
               "--filters", kwargs["filters"], "--kernel", kwargs["kernel_size"],
               "--blocks", kwargs["blocks"], "--dropout", kwargs["dropout"],
               "--batch", args.batch, "--steps", args.steps, "--warmup", args.warmup,
               "--repeats", args.repeats, "--threads", threads] + (["--frozen-decoder"] if args.frozen_decoder else [])
    done = subprocess.run([str(c) for c in command], capture_output=True, text=True,
                          timeout=args.torch_timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{TORCH_SCRIPT.name} failed under {args.torch_python}:\n"
                           f"{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="small", choices=sorted(PRESETS))
    p.add_argument("--seq-len", type=int)
    p.add_argument("--filters", type=int)
    p.add_argument("--kernel", type=int)
    p.add_argument("--blocks", type=int)
    p.add_argument("--dropout", type=float)
    p.add_argument("--n-features", type=int, default=1)
    p.add_argument("--n-targets", type=int, default=1)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=20, help="timed steps per repeat")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps (tracing, XLA)")
    p.add_argument("--repeats", type=int, default=3,
                   help="rounds over all paths, interleaved; each path reports its best")
    p.add_argument("--frozen-decoder", action="store_true",
                   help="train only the head (input_norm and decoder frozen)")
    p.add_argument("--precision", default="float32",
                   choices=["float32", "mixed_float16", "mixed_bfloat16"])
    p.add_argument("--no-xla", action="store_true", help="skip the jit_compile=True runs")
    p.add_argument("--conv-impls", default="conv,im2col,taps",
                   help="comma-separated WeightNormConv1D implementations to time")
    p.add_argument("--torch-python", help="a python with torch: also time benchmarks/torch_tcn.py")
    p.add_argument("--torch-timeout", type=float, default=1800)
    args = p.parse_args(argv)

    set_precision(args.precision)
    kwargs = model_kwargs(args)
    gpus = tf.config.list_physical_devices("GPU")
    device = "GPU" if gpus else "CPU"
    result = {"preset": args.preset, "model": kwargs, "batch": args.batch,
              "frozen_decoder": args.frozen_decoder, "precision": args.precision,
              "device": f"{len(gpus)} GPU" if gpus else f"CPU x{os.cpu_count()}",
              "steps": args.steps, "repeats": args.repeats,
              "auto_jit_compile": choose_jit_compile(kwargs["filters"], device)}
    result["auto_conv_impl"] = sorted({choose_conv_impl(kwargs["kernel_size"], c, 2, device,
                                                        result["auto_jit_compile"])
                                       for c in (kwargs["n_features"], kwargs["filters"])})
    # Every path, so the choice in choose_conv_impl / choose_jit_compile can be checked,
    # and the default training step: what `labquake pretrain` runs with no flag.
    timers = {}
    for impl in args.conv_impls.split(","):
        timers[impl] = keras_step(kwargs, args, jit_compile=False, conv_impl=impl)
        if not args.no_xla:
            timers[f"{impl}+xla"] = keras_step(kwargs, args, jit_compile=True, conv_impl=impl)
    timers["default"] = keras_step(kwargs, args, jit_compile=result["auto_jit_compile"])
    paths = round_robin(timers, args.repeats)
    result["keras_samples_per_s"] = paths.pop("default")
    result["paths_samples_per_s"] = paths
    if args.torch_python:
        # PyTorch's OpenMP threads spin-wait and collapse when other processes share the
        # cores, so it is timed with 1 thread and with all cores, and its best is compared.
        runs = [torch_samples_per_s(kwargs, args, n) for n in sorted({1, os.cpu_count()})]
        result["torch"] = runs[0]["framework"]
        result["torch_samples_per_s_by_threads"] = {r["threads"]: r["samples_per_s"] for r in runs}
        torch_best = max(r["samples_per_s"] for r in runs)
        result.update(torch_samples_per_s=torch_best,
                      default_over_torch=round(result["keras_samples_per_s"] / torch_best, 2),
                      best_path_over_torch=round(max(paths.values()) / torch_best, 2))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
