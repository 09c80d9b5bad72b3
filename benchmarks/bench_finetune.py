"""Fine-tuning wall time to the same early stop: plain path vs cached decoder activations.

    LABQUAKE_DATA_DIR=/work/shared/data/dds python benchmarks/bench_finetune.py
    ... --torch-python /work/torchvenv/bin/python      # and an equivalent PyTorch loop
    ... --preset finetune-paper --epochs 30             # the paper's fine-tuning size
    ... --filters 128 --epochs 3                        # a decoder that dominates the cost

Fine-tunes the first ``--blocks`` blocks of a ``--preset`` TCN (random weights:
speed does not depend on them) on p4581 shear stress, 5:1:4 split, with
``training.finetune.fit``: once with the frozen decoder run at every step, once
on cached activations (their computation included in the time), from the same
initial weights, so both stop at the same epoch. With ``--torch-python`` the
same fine-tuning (frozen ``benchmarks/torch_tcn.TCN`` decoder in eval mode,
AdamW, clipping, the same batches per epoch, as many epochs) runs in that
interpreter. Prints one JSON line.
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
    from labquake_tf.jobs.finetune import _arrays
    from labquake_tf.models import PRESETS, build_tcn
    from labquake_tf.training import TrainConfig
    from labquake_tf.training import finetune as ft

    kwargs = {**PRESETS[args.preset], "dropout": 0.0}
    if args.filters:
        kwargs["filters"] = args.filters
    seq_len = args.seq_len or kwargs["seq_len"]
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="bench-finetune-"))
    prepare.prepare(args.dataset, tmp / "data", seq_len=seq_len, targets=[args.target],
                    split=(0.5, 0.1, 0.4))
    train_xy, val_xy = (_arrays(tmp / "data", s, 512) for s in ("train", "val"))
    source = build_tcn(**{**kwargs, "seq_len": seq_len})
    model = ft.build_finetune_model(source, seq_len, args.blocks or kwargs["blocks"])
    ft.adapt_input_norm(model, train_xy[0])
    initial = model.get_weights()
    config = TrainConfig(epochs=args.epochs, patience=args.patience, batch_size=args.batch,
                         verbose=0)
    result = {"preset": args.preset, "filters": kwargs["filters"], "seq_len": seq_len, "blocks": args.blocks or kwargs["blocks"],
              "train_windows": len(train_xy[1]), "trainable_pct": 100 * ft.trainable_fraction(model)}
    for name, cached in (("plain", False), ("cached", True)):
        model.set_weights(initial)
        start = time.perf_counter()
        history = ft.fit(model, train_xy, val_xy, config, tmp / name, use_cache=cached)
        result[f"{name}_s"] = round(time.perf_counter() - start, 2)
        result[f"{name}_epochs"] = len(history["loss"])
        result[f"{name}_best_val_loss"] = float(min(history["val_loss"]))
    result["cached_speedup"] = round(result["plain_s"] / result["cached_s"], 2)
    if args.torch_python:
        np.savez(tmp / "data.npz", x_train=train_xy[0], y_train=train_xy[1], x_val=val_xy[0],
                 y_val=val_xy[1])
        cmd = [args.torch_python, __file__, "--torch-worker", str(tmp / "data.npz"),
               "--epochs", str(result["cached_epochs"]), "--batch", str(args.batch),
               "--blocks", str(result["blocks"]), "--preset-json", json.dumps(kwargs)]
        torch = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True,
                                          timeout=3600).stdout.strip().splitlines()[-1])
        result.update({f"torch_{k}": v for k, v in torch.items()})
        result["cached_vs_torch"] = round(torch["s"] / result["cached_s"], 2)
    print(json.dumps(result))


def torch_worker(args):
    """The same fine-tuning in PyTorch: frozen decoder in eval mode, head trained."""
    import numpy as np
    import torch
    from torch import nn

    sys.path.insert(0, str(HERE))
    from torch_tcn import TCN

    data = np.load(args.torch_worker)
    kwargs = json.loads(args.preset_json)
    torch.manual_seed(0)
    model = TCN(data["x_train"].shape[1], data["x_train"].shape[2], 1, kwargs["filters"],
                kwargs["kernel_size"], args.blocks, 0.0)
    for module in (model.norm, model.decoder):
        module.requires_grad_(False).eval()
    params = list(model.head.parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-4)
    tensors = {k: torch.from_numpy(data[k]) for k in data.files}
    n = len(tensors["y_train"])
    start = time.perf_counter()
    for _ in range(args.epochs):
        model.head.train()
        for idx in torch.randperm(n).split(args.batch):
            optimizer.zero_grad(set_to_none=True)
            loss = nn.functional.mse_loss(model(tensors["x_train"][idx]), tensors["y_train"][idx])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
        model.head.eval()
        with torch.no_grad():
            val = nn.functional.mse_loss(model(tensors["x_val"]), tensors["y_val"]).item()
    print(json.dumps({"framework": f"torch {torch.__version__}", "threads": torch.get_num_threads(),
                      "s": round(time.perf_counter() - start, 2), "epochs": args.epochs,
                      "last_val_loss": val}))


def main():
    p = argparse.ArgumentParser(description="fine-tuning: plain vs cached vs PyTorch")
    p.add_argument("--preset", default="small")
    p.add_argument("--dataset", default="p4581")
    p.add_argument("--target", default="shear_stress")
    p.add_argument("--filters", type=int, default=None, help="override the preset's filters")
    p.add_argument("--blocks", type=int, default=None)
    p.add_argument("--seq-len", type=int, default=None)
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--patience", type=int, default=10)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--torch-python", default=None, help="interpreter with torch installed")
    p.add_argument("--torch-worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--preset-json", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    torch_worker(args) if args.torch_worker else keras_bench(args)


if __name__ == "__main__":
    main()
