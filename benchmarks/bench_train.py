"""Training speed of the TCN: samples/s of one optimizer step (forward, backward, AdamW).

    python benchmarks/bench_train.py --preset small --torch-python /path/to/torch-venv/bin/python
    python benchmarks/bench_train.py --filters 128 --seq-len 128 --kernel 8 --blocks 5 ...  # medium
    python benchmarks/bench_train.py --preset paper --batch 8 --steps 2 --warmup 1 --repeats 3 \
        --paths conv,im2col,im2col+xla

Measures the step ``labquake pretrain`` runs (``training.compile_model``: MSE, global
gradient clipping, AdamW on the cosine schedule) on one in-memory batch, so input I/O is
not timed; the first ``--warmup`` steps (tracing, XLA compilation) are excluded. Every
path is timed: each ``WeightNormConv1D`` implementation, eager and XLA-compiled
(``--paths``, ``paths_samples_per_s``), then the default (``keras_samples_per_s``: what
``labquake pretrain`` picks with no flag, ``auto_conv_impl`` / ``auto_jit_compile``).
The rules in ``models.layers.choose_conv_impl`` and ``training.trainer.choose_jit_compile``
come from these numbers.

With ``--torch-python`` the same model and step in PyTorch (``benchmarks/torch_tcn.py``,
same trainable parameter count, checked) run in that interpreter as a persistent worker
(``--serve``), timed at 1 thread and at all cores in the SAME round-robin as the Keras
paths (each round every timer once, the order rotating), so load that comes and goes on
a shared machine hits both alike. Reported: the best of the rounds for each
(``default_over_torch``, ``best_path_over_torch``, against torch's best thread count),
and the ratio in each round against torch's best in that round, as median and range
(``default_over_torch_by_round``, ``paths_over_torch_by_round``): the figure to quote.
``--intra-op`` / ``--inter-op`` set TensorFlow's thread pools; ``TF_ENABLE_ONEDNN_OPTS``
in the environment is recorded (``onednn``). Prints one JSON line.
"""

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from labquake_tf.models import PRESETS, build_tcn, decoder_blocks  # noqa: E402
from labquake_tf.models.layers import WeightNormConv1D  # noqa: E402
from labquake_tf.training.config import TrainConfig  # noqa: E402
from labquake_tf.training.strategy import set_precision  # noqa: E402
from labquake_tf.training.trainer import compile_model  # noqa: E402

TORCH_SCRIPT = pathlib.Path(__file__).with_name("torch_tcn.py")
PATHS = [f"{impl}{xla}" for impl in WeightNormConv1D.CONV_IMPLS[1:] for xla in ("", "+xla")]


def model_kwargs(args):
    overrides = {"seq_len": args.seq_len, "filters": args.filters,
                 "kernel_size": args.kernel, "blocks": args.blocks, "dropout": args.dropout}
    kwargs = {**PRESETS[args.preset], **{k: v for k, v in overrides.items() if v is not None}}
    return {**kwargs, "n_features": args.n_features, "n_targets": args.n_targets}


def keras_step(kwargs, args, jit_compile, conv_impl="auto"):
    """A compiled model and its warmed-up ``time_it(steps=args.steps) -> samples/s``."""
    keras.utils.set_random_seed(0)
    model = build_tcn(**kwargs, conv_impl=conv_impl)
    if args.frozen_decoder:
        for layer in [model.get_layer("input_norm"), *decoder_blocks(model)]:
            layer.trainable = False
    compile_model(model, TrainConfig(jit_compile=jit_compile), steps_per_epoch=100)
    trainable_params = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.batch, kwargs["seq_len"], kwargs["n_features"])).astype("float32")
    y = rng.normal(size=(args.batch, kwargs["n_targets"])).astype("float32")
    data = tf.data.Dataset.from_tensors((x, y)).repeat().prefetch(2)
    model.fit(data, steps_per_epoch=args.warmup, epochs=1, verbose=0, shuffle=False)
    # Timed: the compiled step ``fit`` runs per batch, on one persistent iterator, as
    # torch_tcn.py times its step; ``fit``'s own set-up per call (about 30 ms) is what an
    # epoch pays once, and would weigh on a few timed steps.
    iterator = iter(data)
    train_function = model.make_train_function()
    float(train_function(iterator)["loss"])

    def time_it(steps=args.steps):
        start = time.perf_counter()
        for _ in range(steps):
            logs = train_function(iterator)
        float(logs["loss"])
        return steps * args.batch / (time.perf_counter() - start)

    time_it.trainable_params = trainable_params
    time_it.jit_compile = bool(model.jit_compile)
    time_it.conv_impls = {str(layer.dilation_rate): getattr(layer, "resolved_impl", layer.conv_impl)
                          for layer in model._flatten_layers()
                          if isinstance(layer, WeightNormConv1D)}
    return time_it


def round_robin(timers, repeats):
    """Samples/s of every timer in each of ``repeats`` rounds: ``[{name: samples/s}]``.

    Each round runs every timer once, starting one place further along the list each
    round, so on a shared machine load that comes and goes hits every path (the PyTorch
    peer included) alike, and none is always first or last."""
    names = list(timers)
    # One untimed step each first: the first call in a process runs many times slower
    # (measured up to 20x on the tiny preset), whichever path comes first.
    for time_it in timers.values():
        time_it(1)
    rounds = []
    for r in range(repeats):
        shift = r % len(names)
        rounds.append({name: float(f"{timers[name]():.4g}")
                       for name in names[shift:] + names[:shift]})
    return rounds


def summarize(values):
    """Median and range of per-round figures (what load does to them)."""
    return {"median": round(statistics.median(values), 2), "min": round(min(values), 2),
            "max": round(max(values), 2)}


class TorchWorker:
    """``torch_tcn.py --serve`` in ``python``: built and warmed up once, then timed on
    request, so its timings interleave with the Keras paths' in one round-robin."""

    def __init__(self, python, kwargs, args):
        command = [python, str(TORCH_SCRIPT), "--serve", "--seq-len", kwargs["seq_len"],
                   "--n-features", kwargs["n_features"], "--n-targets", kwargs["n_targets"],
                   "--filters", kwargs["filters"], "--kernel", kwargs["kernel_size"],
                   "--blocks", kwargs["blocks"], "--dropout", kwargs["dropout"],
                   "--batch", args.batch, "--warmup", args.warmup]
        command += ["--frozen-decoder"] if args.frozen_decoder else []
        self.process = subprocess.Popen([str(c) for c in command], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True)
        self.info = self._read()

    def _read(self):
        line = self.process.stdout.readline()
        if not line:
            self.process.wait()
            raise RuntimeError(f"{TORCH_SCRIPT.name} --serve failed:\n"
                               f"{self.process.stderr.read()[-2000:]}")
        return json.loads(line)

    def timer(self, steps, threads):
        def time_it(steps=steps):
            self.process.stdin.write(json.dumps({"steps": steps, "threads": threads}) + "\n")
            self.process.stdin.flush()
            return self._read()["samples_per_s"]
        return time_it

    def close(self):
        self.process.stdin.close()
        self.process.wait(timeout=60)


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
    p.add_argument("--paths", default=",".join(PATHS),
                   help="comma-separated paths to time besides the default: a "
                        "WeightNormConv1D implementation, +xla for the XLA-compiled step")
    p.add_argument("--torch-python", help="a python with torch: also time benchmarks/torch_tcn.py, "
                   "interleaved with the Keras paths")
    p.add_argument("--intra-op", type=int, default=0,
                   help="tf.config.threading intra-op threads (0: TensorFlow's default)")
    p.add_argument("--inter-op", type=int, default=0,
                   help="tf.config.threading inter-op threads (0: TensorFlow's default)")
    args = p.parse_args(argv)

    # Before any op runs: TensorFlow fixes its thread pools at the first one.
    if args.intra_op:
        tf.config.threading.set_intra_op_parallelism_threads(args.intra_op)
    if args.inter_op:
        tf.config.threading.set_inter_op_parallelism_threads(args.inter_op)
    set_precision(args.precision)
    kwargs = model_kwargs(args)
    gpus = tf.config.list_physical_devices("GPU")
    result = {"preset": args.preset, "model": kwargs, "batch": args.batch,
              "frozen_decoder": args.frozen_decoder, "precision": args.precision,
              "device": f"{len(gpus)} GPU" if gpus else f"CPU x{os.cpu_count()}",
              "tensorflow": tf.__version__,
              "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default"),
              "tf_threads": {"intra_op": args.intra_op, "inter_op": args.inter_op},
              "steps": args.steps, "repeats": args.repeats,
              "loadavg_start": [round(v, 2) for v in os.getloadavg()]}
    # Every path, so the choice in choose_conv_impl / choose_jit_compile can be checked,
    # and the default training step: what `labquake pretrain` runs with no flag.
    timers = {}
    for path in args.paths.split(","):
        impl, xla = path.removesuffix("+xla"), path.endswith("+xla")
        if impl not in WeightNormConv1D.CONV_IMPLS[1:]:
            p.error(f"--paths: unknown path {path!r}; choose from {', '.join(PATHS)}")
        timers[path] = keras_step(kwargs, args, jit_compile=xla, conv_impl=impl)
    timers["default"] = keras_step(kwargs, args, jit_compile="auto")
    # What compile_model chose (choose_jit_compile / choose_conv_impl), by conv dilation.
    result.update(auto_jit_compile=timers["default"].jit_compile,
                  auto_conv_impl=timers["default"].conv_impls,
                  trainable_params=timers["default"].trainable_params)
    worker = None
    if args.torch_python:
        worker = TorchWorker(args.torch_python, kwargs, args)
        if worker.info["trainable_params"] != result["trainable_params"]:
            raise RuntimeError(f"the PyTorch model has {worker.info['trainable_params']} "
                               f"trainable parameters, the Keras one {result['trainable_params']}: "
                               "not the same model")
        # PyTorch's OpenMP threads spin-wait and collapse when other processes share the
        # cores, so it is timed with 1 thread and with all cores, and its best is compared.
        for n in sorted({1, os.cpu_count()}):
            timers[f"torch@{n}"] = worker.timer(args.steps, n)
    try:
        rounds = round_robin(timers, args.repeats)
    finally:
        if worker is not None:
            worker.close()
    result["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    best = {name: max(r[name] for r in rounds) for name in timers}
    result["keras_samples_per_s"] = best.pop("default")
    torch_names = [name for name in best if name.startswith("torch@")]
    result["paths_samples_per_s"] = {k: v for k, v in best.items() if k not in torch_names}
    result["rounds"] = rounds
    if worker is not None:
        result["torch"] = worker.info["framework"]
        result["torch_samples_per_s_by_threads"] = {n.split("@")[1]: best[n] for n in torch_names}
        torch_best = max(best[n] for n in torch_names)
        paths = result["paths_samples_per_s"]
        result.update(torch_samples_per_s=torch_best,
                      default_over_torch=round(result["keras_samples_per_s"] / torch_best, 2),
                      best_path_over_torch=round(max(paths.values()) / torch_best, 2))
        # Per round, against torch's best thread count in that same round.
        per_round = [r["default"] / max(r[n] for n in torch_names) for r in rounds]
        result["default_over_torch_by_round"] = summarize(per_round)
        result["paths_over_torch_by_round"] = {
            name: summarize([r[name] / max(r[n] for n in torch_names) for r in rounds])
            for name in paths}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
