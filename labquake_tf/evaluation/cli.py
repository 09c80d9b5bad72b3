"""``labquake evaluate MODEL --dataset NAME --split test``: scores in MPa and s, with plots.

The dataset is prepared with the model's window length and targets. On the
dataset the model trained on, the model's own split ratios are reused, so
``test`` is the held-out part it never saw. On another dataset (zero-shot),
features and targets use that dataset's min-max scaler, fit on its own
training part, as fine-tuning would: a scaled prediction is read in the target
experiment's units.

Writes ``OUT/metrics.json`` (per target: RMSE, MAE, R² in physical units and
scaled; event-level scores for ``ttsf``/``ttef``), ``OUT/predictions.csv`` and
``OUT/plots/`` (prediction vs truth over time with a scatter, per target; the
loss curves when MODEL is a run dir with ``history.csv``).
"""

import csv
import pathlib
import shutil
import tempfile

from labquake_tf.evaluation import figures
from labquake_tf.evaluation.metrics import evaluate_model


def evaluate(model_path, dataset=None, split="test", out=None, ratios=None):
    """The whole command: load, prepare, score, write ``out``; returns the metrics."""
    from labquake_tf.data import prepare, splits
    from labquake_tf.data.features import manifest_kind
    from labquake_tf.training.artifacts import load_pretrained, model_files, write_json
    from labquake_tf.training.trainer import read_history

    model, manifest = load_pretrained(model_path)
    dataset = dataset or manifest.get("dataset")
    if not dataset:
        raise ValueError(f"{model_path}: manifest has no 'dataset'; pass --dataset")
    if ratios is None:
        same = dataset == manifest.get("dataset")
        ratios = manifest.get("request", {}).get("split") if same else None
        ratios = ratios or splits.FINETUNE_RATIOS
    targets = manifest.get("target_names")
    # beside a run's model; never inside an export, which TF Serving reads
    base = pathlib.Path(model_files(model_path)[0]).parent
    if base.name == "assets":
        base = pathlib.Path("runs") / base.parent.parent.name
    out = pathlib.Path(out or base / f"eval-{pathlib.Path(str(dataset)).stem}-{split}")
    out.parent.mkdir(parents=True, exist_ok=True)
    work = pathlib.Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        with tempfile.TemporaryDirectory() as data_dir:
            prepare.prepare(dataset, pathlib.Path(data_dir) / "data", seq_len=int(model.input_shape[1]),
                            targets=targets, split=ratios, features=manifest_kind(manifest))
            (work / "plots").mkdir()
            result, p = evaluate_model(model, pathlib.Path(data_dir) / "data", split, work / "plots",
                                       title=f"{dataset}/{split}")
        history = pathlib.Path(model_files(model_path)[0]).parent / "history.csv"
        if history.exists():
            figures.plot_history(read_history(history), work / "plots" / "loss.png")
        result.update(model=str(model_path), dataset=str(dataset), split_ratios=list(ratios))
        write_json(work / "metrics.json", result)
        _write_predictions(work / "predictions.csv", p)
        shutil.rmtree(out, ignore_errors=True)
        work.rename(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return result, out


def _write_predictions(path, p):
    """One row per window end where any target is labelled; a target's ``_true`` is
    empty where it is not a label (its score skips that row)."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["time", *(f"{n}_{kind}" for n in p["names"] for kind in ("true", "pred"))])
        for t, yt, yp in zip(p["time"], p["true"], p["pred"]):
            writer.writerow([f"{t:.6f}", *("" if v != v else f"{v:.6g}"
                                           for pair in zip(yt, yp) for v in pair)])


def add_arguments(parser):
    parser.add_argument("model", help="run dir, .keras file (manifest.json beside it) or "
                        "exported SavedModel version dir")
    parser.add_argument("--dataset", default=None,
                        help="dataset name or record path (default: the one the model trained on)")
    parser.add_argument("--split", default="test", choices=("train", "val", "test"))
    parser.add_argument("--ratios", default=None,
                        help="train,val,test event ratios (default: the model's own on its "
                             "dataset, 0.5,0.1,0.4 elsewhere)")
    parser.add_argument("--out", default=None, help="output dir (default: beside the model; "
                        "runs/NAME/ for an exported SavedModel)")


def run(args):
    from labquake_tf.data.splits import parse_ratios

    ratios = parse_ratios(args.ratios) if args.ratios else None
    result, out = evaluate(args.model, args.dataset, args.split, args.out, ratios)
    for name, m in result["targets"].items():
        line = (f"{name}: RMSE {m['rmse']:.4g} {m['units']}, MAE {m['mae']:.4g}, R² {m['r2']:.4f}"
                f" (scaled RMSE {m['rmse_scaled']:.4g})")
        if name in result["events"]:
            line += f"; per-event failure-time MAE {result['events'][name]['mae_s']:.3g} s"
        print(line)
    print(f"wrote {out}/metrics.json, predictions.csv, plots/")
    return 0
