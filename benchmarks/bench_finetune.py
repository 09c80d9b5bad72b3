"""The default fine-tune's wall time, counted whole, against a PyTorch loop training as many heads.

    LABQUAKE_DATA_DIR=/work/shared/data/dds python benchmarks/bench_finetune.py
    ... --preset finetune-paper --torch-python PY    # the paper's fine-tuning shape
    ... --compare-plain                               # also one head: plain vs cached

Fine-tunes the first ``--blocks`` blocks of a ``--preset`` TCN (random weights:
speed does not depend on them) on p4581 shear stress, 5:1:4 split, as the
``finetune`` job does by default: an ensemble of ``--members`` heads
(``training.ensemble.fit_members``, cached decoder activations, early stopping per
head; epochs and patience are the job's, ``jobs.finetune.TRAINING``, unless given),
then its forward-calibration twin (as many heads, fit on the training
windows before the middle event). ``keras_s`` is all of it, decoder passes
included. With ``--torch-python`` the same heads train in that interpreter, one
after the other, each for the epochs its Keras counterpart ran, with the frozen
``benchmarks/torch_tcn.TCN`` decoder run at every step (the reference code's way);
``--torch-epochs K`` times K epochs per kind of job and scales (each epoch is the
same work; 0 runs every head in full). ``--compare-plain`` adds one head on the
plain path against cached activations, from the same start. The last line is
JSON; ``speedup_vs_torch`` = PyTorch seconds / ``keras_s``.
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent


def keras_bench(args):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np

    from labquake_tf.data import prepare
    from labquake_tf.evaluation.calibration import forward_windows
    from labquake_tf.jobs.finetune import _arrays, finetune_config
    from labquake_tf.models import PRESETS, build_tcn
    from labquake_tf.models import heads
    from labquake_tf.training import cache, ensemble
    from labquake_tf.training import finetune as ft

    kwargs = {**PRESETS[args.preset], "dropout": 0.0}
    if args.filters:
        kwargs["filters"] = args.filters
    seq_len = args.seq_len or kwargs["seq_len"]
    blocks = args.blocks or kwargs["blocks"]
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="bench-finetune-"))
    prepare.prepare(args.dataset, tmp / "data", seq_len=seq_len, targets=[args.target],
                    split=(0.5, 0.1, 0.4))
    train_xy, val_xy = (_arrays(tmp / "data", s, 512) for s in ("train", "val"))
    source = build_tcn(**{**kwargs, "seq_len": seq_len})
    # The fine-tune job's own training defaults (epochs, patience) unless given.
    config = finetune_config(batch_size=args.batch, verbose=0,
                             **{k: v for k, v in (("epochs", args.epochs),
                                                  ("patience", args.patience)) if v is not None})
    result = {"preset": args.preset, "filters": kwargs["filters"], "seq_len": seq_len,
              "blocks": blocks, "epochs": config.epochs, "patience": config.patience,
              "members": args.members,
              "train_windows": len(train_xy[1]), "load_avg_1min_start": os.getloadavg()[0]}

    def finetune_model():
        model = ft.build_finetune_model(source, seq_len, blocks)
        if model.input_norm_source in ("refit", "adapt"):
            ft.adapt_input_norm(model, train_xy[0])
        return model

    if args.compare_plain:  # one head, plain path vs cached activations, same start
        model = finetune_model()
        initial = model.get_weights()
        result["trainable_pct"] = 100 * ft.trainable_fraction(model)
        for name, cached in (("plain", False), ("cached", True)):
            model.set_weights(initial)
            cache.forget()
            start = time.perf_counter()
            history = ft.fit(model, train_xy, val_xy, config, tmp / name, use_cache=cached)
            result[f"{name}_s"] = round(time.perf_counter() - start, 2)
            result[f"{name}_epochs"] = len(history["loss"])
            result[f"{name}_best_val_loss"] = float(min(history["val_loss"]))
        result["cached_speedup"] = round(result["plain_s"] / result["cached_s"], 2)

    # The default fine-tune, counted whole: the ensemble on the training windows, then
    # its forward-calibration twin on the early half (what jobs.finetune runs).
    cache.forget()
    early, _ = forward_windows(tmp / "data", seq_len)
    start = time.perf_counter()
    model = heads.add_heads(finetune_model(), args.members, seed=config.seed)
    main_h = ensemble.fit_members(model, train_xy, val_xy, config, tmp / "main")
    seen = len(cache._MEMO["rows"])
    twin = heads.add_heads(finetune_model(), args.members, seed=config.seed)
    twin_h = ensemble.fit_members(twin, early, val_xy, config, tmp / "forward")
    result["keras_s"] = round(time.perf_counter() - start, 2)
    result["twin_windows_run_again"] = len(cache._MEMO["rows"]) - seen
    result["early_windows"] = len(early[1])
    result["member_epochs"] = [len(h["loss"]) for h in main_h]
    result["twin_member_epochs"] = [len(h["loss"]) for h in twin_h]
    result["best_val_loss"] = [round(float(min(h["val_loss"])), 6) for h in main_h]
    if args.torch_python:
        np.savez(tmp / "data.npz", x_train=train_xy[0], y_train=train_xy[1], x_val=val_xy[0],
                 y_val=val_xy[1], x_early=early[0], y_early=early[1])
        jobs = ([["train", e] for e in result["member_epochs"]]
                + [["early", e] for e in result["twin_member_epochs"]])
        cmd = [args.torch_python, __file__, "--torch-worker", str(tmp / "data.npz"),
               "--jobs", json.dumps(jobs), "--batch", str(args.batch), "--blocks", str(blocks),
               "--torch-epochs", str(args.torch_epochs), "--preset-json", json.dumps(kwargs)]
        torch = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True,
                                          timeout=3 * 3600).stdout.strip().splitlines()[-1])
        result.update({f"torch_{k}": v for k, v in torch.items()})
        result["speedup_vs_torch"] = round(torch["s"] / result["keras_s"], 2)
    result["load_avg_1min_end"] = os.getloadavg()[0]
    print(json.dumps(result))


def torch_worker(args):
    """The same heads in PyTorch, one after the other as independent fine-tunes: frozen
    decoder in eval mode inside the model (run at every step, as the reference code
    does), head trained with AdamW and clipping, a validation pass per epoch.

    ``--torch-epochs K`` (> 0): each kind of job (training windows, early windows) is
    timed for K epochs of one head, after one untimed step, and the total is that
    per-epoch time times every head's epochs (each epoch does the same work); 0 runs
    every head in full."""
    import numpy as np
    import torch
    from torch import nn

    sys.path.insert(0, str(HERE))
    from torch_tcn import TCN

    data = np.load(args.torch_worker)
    kwargs = json.loads(args.preset_json)
    tensors = {k: torch.from_numpy(data[k]) for k in data.files}

    def fine_tune(kind, epochs, seed):
        torch.manual_seed(seed)
        x, y = tensors[f"x_{kind}"], tensors[f"y_{kind}"]
        model = TCN(x.shape[1], x.shape[2], 1, kwargs["filters"], kwargs["kernel_size"],
                    args.blocks, 0.0)
        for module in (model.norm, model.decoder):
            module.requires_grad_(False).eval()
        params = list(model.head.parameters())
        optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-4)

        def step(idx):
            optimizer.zero_grad(set_to_none=True)
            loss = nn.functional.mse_loss(model(x[idx]), y[idx])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()

        step(torch.arange(min(args.batch, len(y))))  # untimed: allocator, oneDNN setup
        start = time.perf_counter()
        for _ in range(epochs):
            model.head.train()
            for idx in torch.randperm(len(y)).split(args.batch):
                step(idx)
            model.head.eval()
            with torch.no_grad():
                val = nn.functional.mse_loss(model(tensors["x_val"]), tensors["y_val"]).item()
        return time.perf_counter() - start, val

    jobs = json.loads(args.jobs)
    if args.torch_epochs > 0:
        per_epoch = {kind: fine_tune(kind, args.torch_epochs, 0)[0] / args.torch_epochs
                     for kind in sorted({k for k, _ in jobs})}
        seconds = sum(per_epoch[k] * e for k, e in jobs)
        extra = {"extrapolated": True, "epochs_timed_per_kind": args.torch_epochs,
                 "epoch_s": {k: round(v, 2) for k, v in per_epoch.items()}}
    else:
        seconds = sum(fine_tune(k, e, i)[0] for i, (k, e) in enumerate(jobs))
        extra = {"extrapolated": False}
    print(json.dumps({"framework": f"torch {torch.__version__}", "threads": torch.get_num_threads(),
                      "s": round(seconds, 2), "heads": len(jobs),
                      "head_epochs": sum(e for _, e in jobs), **extra}))


def main():
    p = argparse.ArgumentParser(description="fine-tuning: plain vs cached vs PyTorch")
    p.add_argument("--preset", default="small")
    p.add_argument("--dataset", default="p4581")
    p.add_argument("--target", default="shear_stress")
    p.add_argument("--filters", type=int, default=None, help="override the preset's filters")
    p.add_argument("--blocks", type=int, default=None)
    p.add_argument("--seq-len", type=int, default=None)
    p.add_argument("--epochs", type=int, default=None,
                   help="epochs per head (default: the fine-tune job's, jobs.finetune.TRAINING)")
    p.add_argument("--patience", type=int, default=None,
                   help="early-stopping patience (default: the fine-tune job's)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--members", type=int, default=None,
                   help="heads per ensemble (default: the fine-tune's, 5)")
    p.add_argument("--compare-plain", action="store_true",
                   help="also one head on the plain path and on cached activations")
    p.add_argument("--torch-epochs", type=int, default=1,
                   help="PyTorch: epochs timed per kind of job, then scaled (0: run all)")
    p.add_argument("--jobs", default=None, help=argparse.SUPPRESS)
    p.add_argument("--torch-python", default=None, help="interpreter with torch installed")
    p.add_argument("--torch-worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--preset-json", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.torch_worker:
        return torch_worker(args)
    if args.members is None:
        from labquake_tf.models.heads import DEFAULT_MEMBERS

        args.members = DEFAULT_MEMBERS
    keras_bench(args)


if __name__ == "__main__":
    main()
