"""``labquake pretrain`` / ``scripts/pretrain.py``: the main job, data to SavedModel.

prepare the dataset into the run dir -> build a TCN preset under the strategy ->
train (resumable) -> score the test split in physical units -> plots -> export.

The run is written into ``OUT.partial`` and renamed to ``OUT`` when complete;
starting the same command again after a kill resumes from ``OUT.partial/backup``.
Defaults are CPU-sized (the ``small`` preset, 10 epochs: minutes on 2 cores);
``--preset paper --epochs 300`` is the reference set-up for a GPU.
"""

import pathlib
import shutil
import sys

from labquake_tf.data.splits import PRETRAIN_RATIOS
from labquake_tf.training.artifacts import write_json
from labquake_tf.training.config import TrainConfig
from labquake_tf.training.strategy import get_strategy, is_chief

DEFAULTS = dict(dataset="synthetic-biaxial", preset="small", targets=("shear_stress",),
                out="runs/pretrain", export_name="labquake-pretrain", epochs=10)


def pretrain(dataset=DEFAULTS["dataset"], out=DEFAULTS["out"], preset=DEFAULTS["preset"],
             targets=DEFAULTS["targets"], config=None, export_name=DEFAULTS["export_name"],
             export_dir="saved_models", split=PRETRAIN_RATIOS, **model_overrides):
    """The whole job; returns ``(model, summary)`` with test metrics and paths."""
    config = config or TrainConfig(epochs=DEFAULTS["epochs"])
    # First: MultiWorkerMirroredStrategy must exist before any other TensorFlow op.
    strategy = get_strategy(config.strategy)
    from labquake_tf.data import pipeline, prepare
    from labquake_tf.evaluation import figures
    from labquake_tf.evaluation.metrics import evaluate_model
    from labquake_tf.models import PRESETS, build_tcn, input_length
    from labquake_tf.training.trainer import train

    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    out = pathlib.Path(out)
    chief = is_chief(strategy)
    # Workers other than the chief train in a scratch dir of their own, dropped at the end.
    worker = "" if chief else f".{strategy.cluster_resolver.task_type}{strategy.cluster_resolver.task_id}"
    work = out.with_name(f"{out.name}{worker}.partial")
    data_dir = work / "data"
    model_kwargs = {**PRESETS[preset], **model_overrides}
    # A streamable model's windows carry its decoder's history too.
    window = input_length(model_kwargs["seq_len"], model_kwargs["kernel_size"],
                          model_kwargs["blocks"], model_kwargs.get("streamable", False))
    manifest = prepare.prepare(dataset, data_dir, seq_len=window,
                               targets=list(targets), split=split)
    model_kwargs.update(n_features=len(manifest["feature_names"]), n_targets=len(targets))
    write_json(work / "manifest.json", manifest)
    write_json(work / "config.json", {"model": model_kwargs, "preset": preset,
                                      "dataset": dataset, "train": config.to_dict()})

    train_ds = pipeline.make_dataset(data_dir, "train", batch_size=config.batch_size,
                                     shuffle=True, seed=config.seed,
                                     repeat=config.steps_per_epoch is not None)
    val_ds = pipeline.make_dataset(data_dir, "val", batch_size=config.batch_size)
    model, history = train(lambda: build_tcn(**model_kwargs), train_ds, val_ds, config, work,
                           data_signature=manifest["request"])
    if not chief:
        shutil.rmtree(work, ignore_errors=True)
        return model, {}

    (work / "plots").mkdir(exist_ok=True)
    figures.plot_history(history, work / "plots" / "loss.png")
    scores, _ = evaluate_model(model, data_dir, "test", work / "plots")
    write_json(work / "metrics.json", scores)
    shutil.rmtree(out, ignore_errors=True)
    work.rename(out)

    from labquake_tf.serving.export import export_model

    export = export_model(model, manifest, export_name, base_dir=export_dir,
                          extra_metadata={"run": str(out), "preset": preset})
    return model, {"run": str(out), "export": str(export), "metrics": scores,
                   "epochs_run": len(history.get("loss", []))}


def add_arguments(parser):
    parser.add_argument("--dataset", default=DEFAULTS["dataset"],
                        help="registry name (synthetic-biaxial, p4581, ...) or record path")
    parser.add_argument("--preset", default=DEFAULTS["preset"], help="TCN preset (small, paper, ...; small-stream, paper-stream, ... "
                             "for the streamable variant)")
    parser.add_argument("--targets", default=",".join(DEFAULTS["targets"]),
                        help="comma-separated: shear_stress,ttsf,ttef")
    parser.add_argument("--epochs", type=int, default=DEFAULTS["epochs"])
    parser.add_argument("--batch-size", type=int, default=TrainConfig.batch_size,
                        help="global batch (per replica x replicas)")
    parser.add_argument("--learning-rate", type=float, default=TrainConfig.learning_rate)
    parser.add_argument("--patience", type=int, default=TrainConfig.patience)
    parser.add_argument("--strategy", default="auto",
                        choices=("auto", "default", "mirrored", "multiworker"))
    parser.add_argument("--precision", default="auto",
                        choices=("auto", "float32", "mixed_float16", "mixed_bfloat16"))
    parser.add_argument("--steps-per-epoch", "--max-steps", dest="steps_per_epoch", type=int,
                        default=None, help="cap each epoch at this many batches")
    parser.add_argument("--jit-compile", action="store_true", help="compile the step with XLA")
    parser.add_argument("--seed", type=int, default=TrainConfig.seed)
    parser.add_argument("--out", default=DEFAULTS["out"], help="run dir")
    parser.add_argument("--export-name", default=DEFAULTS["export_name"],
                        help="model name under --export-dir")
    parser.add_argument("--export-dir", default="saved_models")


def run(args):
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size,
                         learning_rate=args.learning_rate, patience=args.patience,
                         strategy=args.strategy, precision=args.precision, seed=args.seed,
                         steps_per_epoch=args.steps_per_epoch, jit_compile=args.jit_compile)
    targets = tuple(t.strip() for t in args.targets.split(",") if t.strip())
    _, summary = pretrain(args.dataset, args.out, args.preset, targets, config,
                          args.export_name, args.export_dir)
    scores = summary.get("metrics", {})
    for name, m in scores.get("targets", {}).items():
        print(f"test {name}: RMSE {m['rmse']:.4g} {m['units']}, MAE {m['mae']:.4g} {m['units']}, "
              f"R2 {m['r2']:.3f} ({m['n_labelled']} labelled test steps)")
    if summary:
        print(f"run dir: {summary['run']}\nSavedModel: {summary['export']}")
    return 0


def main(argv=None):
    """``python scripts/pretrain.py`` / ``python -m labquake_tf.training.pretrain``."""
    from labquake_tf.cli import main as cli_main

    return cli_main(["pretrain", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
