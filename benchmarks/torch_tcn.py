"""PyTorch reference TCN and its training-step speed, for ``bench_train.py --torch-python``.

Runs in its own virtualenv (torch is not a package dependency): the same architecture as
``labquake_tf.models.build_tcn`` (BatchNorm1d over time, weight-normed causal dilated
convs, dropout, 1x1 residual, Conv1d(64, 2, padding=1) head; the same trainable
parameter count, which ``bench_train.py`` checks) and the same step (float32, MSE,
``clip_grad_norm_`` at 1.0, AdamW) on one in-memory batch.

One-shot: prints one JSON line (best of ``--repeats``). ``--serve``: builds and warms up
once, prints a ready line (``{"framework", "trainable_params", ...}``), then answers
each stdin line ``{"steps": N, "threads": T}`` with ``{"samples_per_s", "seconds", ...}``
after N steps on T intra-op threads: ``bench_train.py`` interleaves these with its Keras
paths so load on a shared machine hits both alike.
"""

import argparse
import json
import sys
import time

import torch
from torch import nn
from torch.nn.utils.parametrizations import weight_norm


class Block(nn.Module):
    def __init__(self, n_in, n_out, kernel_size, dilation, dropout):
        super().__init__()
        self.pad = (kernel_size - 1) * dilation
        self.conv1 = weight_norm(nn.Conv1d(n_in, n_out, kernel_size, dilation=dilation))
        self.conv2 = weight_norm(nn.Conv1d(n_out, n_out, kernel_size, dilation=dilation))
        self.drop = nn.Dropout(dropout)
        self.residual = nn.Conv1d(n_in, n_out, 1) if n_in != n_out else None

    def forward(self, x):
        h = self.drop(torch.relu(self.conv1(nn.functional.pad(x, (self.pad, 0)))))
        h = self.drop(torch.relu(self.conv2(nn.functional.pad(h, (self.pad, 0)))))
        return torch.relu(h + (x if self.residual is None else self.residual(x)))


class TCN(nn.Module):
    def __init__(self, seq_len, n_features, n_targets, filters, kernel_size, blocks, dropout):
        super().__init__()
        self.norm = nn.BatchNorm1d(seq_len)  # input (B, T, F): channel axis 1 = time
        widths = [n_features] + [filters] * blocks
        self.decoder = nn.Sequential(*[Block(widths[i], widths[i + 1], kernel_size, 2 ** i,
                                             dropout) for i in range(blocks)])
        self.head = nn.Sequential(nn.Conv1d(filters, 64, 2, padding=1), nn.ReLU(),
                                  nn.Flatten(), nn.Linear(64 * (seq_len + 1), 128), nn.ReLU(),
                                  nn.Linear(128, n_targets))

    def forward(self, x):
        return self.head(self.decoder(self.norm(x).transpose(1, 2)))


def parse_args(argv=None):
    p = argparse.ArgumentParser()
    for name, default in [("seq-len", 64), ("n-features", 1), ("n-targets", 1),
                          ("filters", 32), ("kernel", 4), ("blocks", 4), ("batch", 128),
                          ("steps", 20), ("warmup", 3), ("repeats", 2),
                          ("threads", 0)]:
        p.add_argument(f"--{name}", type=int, default=default)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--frozen-decoder", action="store_true")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--amp", action="store_true", help="autocast (float16: with loss scaling)")
    p.add_argument("--amp-dtype", choices=("float16", "bfloat16"), default="float16")
    p.add_argument("--no-tf32", action="store_true",
                   help="float32 convs and matmuls in true float32 (cuDNN allows TF32 by default)")
    p.add_argument("--serve", action="store_true",
                   help="answer {steps, threads} JSON lines on stdin (see the module doc)")
    return p.parse_args(argv)


def make_step(args):
    """The model and its training step (returns the loss tensor, not synchronised)."""
    torch.manual_seed(0)
    model = TCN(args.seq_len, args.n_features, args.n_targets, args.filters, args.kernel,
                args.blocks, args.dropout).to(args.device)
    model.train()
    if args.frozen_decoder:
        for module in (model.norm, model.decoder):
            module.requires_grad_(False).eval()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-4)
    x = torch.randn(args.batch, args.seq_len, args.n_features, device=args.device)
    y = torch.randn(args.batch, args.n_targets, device=args.device)
    # bfloat16 has float32's range: no loss scaling.
    scaler = torch.amp.GradScaler(args.device, enabled=args.amp and args.amp_dtype == "float16")
    dtype = getattr(torch, args.amp_dtype)

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(args.device, dtype=dtype, enabled=args.amp):
            loss = nn.functional.mse_loss(model(x).float(), y)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        scaler.step(optimizer)
        scaler.update()
        return loss

    return model, params, step


def synchronize():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def time_steps(step, steps, batch):
    synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        loss = step()
    loss.item()  # waits for the last step (CUDA is asynchronous)
    synchronize()
    seconds = time.perf_counter() - start
    return seconds, steps * batch / seconds


def serve(args, params, step):
    # Warm up at every thread count the caller may ask for (allocator, oneDNN primitives).
    for threads in sorted({1, torch.get_num_threads()}):
        torch.set_num_threads(threads)
        for _ in range(args.warmup):
            step()
    print(json.dumps({"ready": True, "framework": f"torch {torch.__version__}",
                      "device": args.device, "amp": args.amp,
                      "trainable_params": sum(p.numel() for p in params),
                      "max_threads": torch.get_num_threads()}), flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        threads = int(request.get("threads", 0)) or torch.get_num_threads()
        torch.set_num_threads(threads)
        seconds, samples_per_s = time_steps(step, int(request["steps"]), args.batch)
        print(json.dumps({"threads": torch.get_num_threads(), "steps": int(request["steps"]),
                          "seconds": round(seconds, 4),
                          "samples_per_s": float(f"{samples_per_s:.4g}")}), flush=True)


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.no_tf32:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    model, params, step = make_step(args)
    if args.serve:
        return serve(args, params, step)
    first = time_steps(step, 1, args.batch)[0]  # cuDNN's algorithm search, allocator
    for _ in range(args.warmup - 1):
        step()
    best = max(time_steps(step, args.steps, args.batch)[1] for _ in range(args.repeats))
    print(json.dumps({"framework": f"torch {torch.__version__}",
                      "threads": torch.get_num_threads(), "device": args.device,
                      "amp": args.amp and args.amp_dtype,
                      "trainable_params": sum(p.numel() for p in params),
                      "first_step_s": round(first, 3), "samples_per_s": float(f"{best:.4g}")}))


if __name__ == "__main__":
    main()
