"""Reproduce the paper's transfer experiments that the public data allows.

    python scripts/reproduce.py                  # CPU-sized (preset "small"), tens of minutes
    python scripts/reproduce.py --preset paper   # the paper's model sizes, for a GPU

1. Pretrain shear-stress models on ``synthetic-biaxial`` and on ``p5198``.
2. Zero-shot: both on p4581 shear stress.
3. Fine-tune (first K blocks frozen, fresh head): synthetic-biaxial -> p4581
   shear stress, TTsF, TTeF and p5198 TTsF, TTeF; p5198 -> p4581 (all three).
4. From scratch: the fine-tuning architecture, all of it trained, on the same
   targets and splits (5:1:4 by events).

Writes ``OUT/results.csv``, ``OUT/results.md`` and each run's plots under
``OUT/<run>/plots/``, and prints the issue's accuracy targets next to what
was reached.
"""

import argparse
import csv
import json
import pathlib
import sys
import time

from labquake_tf.jobs.evaluate import evaluate
from labquake_tf.jobs.finetune import finetune
from labquake_tf.jobs.pretrain import pretrain
from labquake_tf.models import PRESETS
from labquake_tf.training import TrainConfig

SIZES = {
    # source preset, fine-tuning (blocks, seq_len); CPU: the small preset throughout
    "small": ("small", 4, 64),
    "paper": ("paper", PRESETS["finetune-paper"]["blocks"], PRESETS["finetune-paper"]["seq_len"]),
}
SOURCES = ("synthetic-biaxial", "p5198")
FINETUNES = [("synthetic-biaxial", "p4581", t) for t in ("shear_stress", "ttsf", "ttef")]
FINETUNES += [("synthetic-biaxial", "p5198", t) for t in ("ttsf", "ttef")]
FINETUNES += [("p5198", "p4581", t) for t in ("shear_stress", "ttsf", "ttef")]
GOALS = {("p4581", "shear_stress"): "RMSE <= 0.053 MPa and R2 >= 0.94",
         ("p5198", "ttsf"): "RMSE <= 0.55 s"}
COLUMNS = ["mode", "source", "dataset", "target", "rmse", "r2", "units", "event_mae_s",
           "trainable_pct", "epochs", "wall_s", "run"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--preset", choices=sorted(SIZES), default="small")
    parser.add_argument("--out", default="runs/reproduce")
    parser.add_argument("--pretrain-epochs", type=int, default=15)
    parser.add_argument("--pretrain-steps", type=int, default=150,
                        help="batches per pretraining epoch (synthetic records are long)")
    parser.add_argument("--epochs", type=int, default=60, help="fine-tuning / from-scratch epochs")
    parser.add_argument("--patience", type=int, default=10)
    args = parser.parse_args(argv)

    out = pathlib.Path(args.out)
    preset, blocks, seq_len = SIZES[args.preset]
    exports = out / "exports"
    pre_config = TrainConfig(epochs=args.pretrain_epochs, steps_per_epoch=args.pretrain_steps,
                             patience=args.patience, verbose=2)
    config = TrainConfig(epochs=args.epochs, patience=args.patience, verbose=0)
    rows = []

    def record(mode, source, dataset, target, metrics, run, wall, extra=None):
        m = metrics["targets"][target]
        rows.append({"mode": mode, "source": source, "dataset": dataset, "target": target,
                     "rmse": m["rmse"], "r2": m["r2"], "units": m["units"],
                     "event_mae_s": metrics.get("events", {}).get(target, {}).get("mae_s", ""),
                     "trainable_pct": "", "epochs": "", "wall_s": round(wall, 1),
                     "run": str(run), **(extra or {})})
        print(f"{mode:>12} {source:>17} -> {dataset}/{target}: RMSE {m['rmse']:.4g} "
              f"{m['units']}, R2 {m['r2']:.3f} ({wall:.0f} s)", flush=True)
        _write(rows, out)

    for source in SOURCES:
        start = time.time()
        run = out / f"pretrain-{source}"
        if not (run / "model.keras").exists():  # a rerun reuses finished pretraining
            pretrain(source, run, preset=preset, config=pre_config,
                     export_name=f"reproduce-{source}", export_dir=exports)
        record("pretrained", source, source, "shear_stress", _test_metrics(run), run,
               time.time() - start)
        start = time.time()
        metrics, _ = evaluate(run, "p4581", "test", out / f"zero-shot-{source}-p4581")
        record("zero-shot", source, "p4581", "shear_stress", metrics, run, time.time() - start)

    for source, dataset, target in FINETUNES:
        start = time.time()
        run = out / f"finetune-{source}-{dataset}-{target}"
        s = finetune(out / f"pretrain-{source}", dataset, run, target=target, blocks=blocks,
                     seq_len=seq_len, config=config).metadata["training"]
        record("fine-tuned", source, dataset, target, s["metrics"]["test"], run,
               time.time() - start, {"trainable_pct": round(100 * s["trainable_fraction"], 2),
                                     "epochs": s["epochs_run"]})

    for dataset, target in sorted({(d, t) for _, d, t in FINETUNES}):
        start = time.time()
        run = out / f"scratch-{dataset}-{target}"
        pretrain(dataset, run, preset=preset, targets=(target,), config=config,
                 export_name=f"reproduce-scratch-{dataset}-{target}", export_dir=exports,
                 split=(0.5, 0.1, 0.4), blocks=blocks, seq_len=seq_len)
        record("from-scratch", "-", dataset, target, _test_metrics(run), run, time.time() - start)

    print("\n" + (out / "results.md").read_text())
    for (dataset, target), goal in GOALS.items():
        best = min((r for r in rows if r["dataset"] == dataset and r["target"] == target
                    and r["mode"] == "fine-tuned"), key=lambda r: r["rmse"])
        print(f"goal {dataset}/{target} fine-tuned: {goal}; reached RMSE {best['rmse']:.4g} "
              f"{best['units']}, R2 {best['r2']:.3f} (from {best['source']})")
    return 0


def _test_metrics(run):
    """The test-split scores a pretraining run wrote (same schema as ``labquake evaluate``)."""
    return json.loads((pathlib.Path(run) / "metrics.json").read_text())


def _write(rows, out):
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| " + " | ".join(COLUMNS[:-1]) + " |", "|" + "---|" * (len(COLUMNS) - 1)]
    for r in rows:
        lines.append("| " + " | ".join(f"{r[c]:.4g}" if isinstance(r[c], float) else str(r[c])
                                       for c in COLUMNS[:-1]) + " |")
    (out / "results.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
