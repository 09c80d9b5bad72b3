"""``labquake transfer-matrix``: each source model applied to each target, zero-shot and fine-tuned.

The paper's Fig. 2 idea on the data at hand: a model trained on a source
experiment predicts a target experiment as it is (zero-shot) and after
fine-tuning its head on the target (``jobs.finetune``). Writes
``OUT/transfer.csv``, ``OUT/transfer.md`` and one heat map per mode
(``OUT/transfer_zero-shot.png``, ``OUT/transfer_fine-tuned.png``).

On the diagonal (source = target) the zero-shot cell is the source model's own
held-out test score, read from the run's own prepared shards (``RUN/data``, see
``jobs.evaluate``), and there is no fine-tuned cell: fine-tuning splits the
events 5:1:4, so its training part would overlap the source's training events.
Off the diagonal, both modes score the target's last 40 % of events; zero-shot
prepares the target with the source run's channels and processing, scales its
inputs with the source's feature scaler and inverts with the source's target scaler.
"""

import pathlib

from labquake_tf import TARGETS
from labquake_tf.evaluation import transfer
from labquake_tf.jobs.evaluate import evaluate
from labquake_tf.jobs.finetune import finetune
from labquake_tf.jobs.pretrain import pretrain
from labquake_tf.training import TrainConfig

DEFAULT_SOURCES = ("synthetic-biaxial", "p4581", "p5198")
DEFAULT_TARGETS = ("p4581", "p5198")


def transfer_matrix(runs, targets, out_dir, target="shear_stress", blocks=None, seq_len=None,
                    config=None, finetune_options=None):
    """Score every run in ``runs`` ({source name: run dir}) on every target dataset.

    ``finetune_options``: more keyword arguments for ``jobs.finetune.finetune`` (e.g.
    ``ensemble=1`` where the intervals do not matter, only the RMSE).

    Returns rows ``{"source", "target", "mode", "rmse", "r2", "units"}`` and writes
    the CSV, Markdown and heat maps into ``out_dir``.
    """
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for source, run in runs.items():
        for dataset in targets:
            # a record path names its cell by the file's stem: one folder, inside out_dir
            cell = f"{pathlib.Path(source).stem}-{pathlib.Path(dataset).stem}"
            # The diagonal is the run's own test split, read from its own prepared data.
            result, _ = evaluate(run, None if dataset == source else dataset, "test",
                                 out_dir / "zero-shot" / cell)
            rows.append(transfer.row(source, dataset, "zero-shot", result, target))
            if dataset == source:
                continue
            tuned = finetune(run, dataset, out_dir / "fine-tuned" / cell, target=target,
                             blocks=blocks, seq_len=seq_len, config=config,
                             **(finetune_options or {}))
            rows.append(transfer.row(source, dataset, "fine-tuned",
                                     tuned.metadata["training"]["metrics"]["test"], target))
    transfer.write_tables(rows, out_dir)
    return rows


def add_arguments(parser):
    parser.add_argument("--sources", default=",".join(DEFAULT_SOURCES),
                        help="datasets to pretrain on (comma separated)")
    parser.add_argument("--runs", default=None,
                        help="use existing source models instead: NAME=RUN_DIR,... "
                             "(NAME is the dataset it trained on)")
    parser.add_argument("--targets", default=",".join(DEFAULT_TARGETS))
    parser.add_argument("--target", default="shear_stress", choices=TARGETS)
    parser.add_argument("--preset", default="small", help="TCN preset of the source models")
    parser.add_argument("--epochs", type=int, default=30, help="source pretraining epochs")
    parser.add_argument("--finetune-epochs", type=int, default=30)
    parser.add_argument("--blocks", type=int, default=None, help="fine-tuned decoder blocks")
    parser.add_argument("--seq-len", type=int, default=None, help="fine-tuning window")
    parser.add_argument("--out", default="runs/transfer")


def run(args):
    out = pathlib.Path(args.out)
    if args.runs:
        runs = dict(item.split("=", 1) for item in args.runs.split(","))
    else:
        config = TrainConfig(epochs=args.epochs, patience=10, verbose=2)
        runs = {}
        for source in args.sources.split(","):
            runs[source] = out / "sources" / source
            pretrain(source, runs[source], preset=args.preset, targets=(args.target,),
                     config=config, export_name=f"transfer-{source}", export_dir=out / "exports")
    ft_config = TrainConfig(epochs=args.finetune_epochs, patience=10, verbose=0)
    rows = transfer_matrix(runs, args.targets.split(","), out, args.target, args.blocks,
                           args.seq_len, ft_config)
    print((out / "transfer.md").read_text())
    print(f"wrote {out}/transfer.csv, transfer.md, transfer_*.png ({len(rows)} cells)")
    return 0
