"""``labquake pretrain`` / ``scripts/pretrain.py``: the main job, data to SavedModel.

prepare the dataset into the run dir -> build a TCN preset under the strategy ->
train (resumable) -> score the test split in physical units -> plots -> export.

The run is written into ``OUT.partial`` and renamed to ``OUT`` when complete;
starting the same command again after a kill resumes from ``OUT.partial/backup``.
Defaults are CPU-sized (the ``small`` preset, 10 epochs: minutes on 2 cores);
``--preset paper --epochs 300`` is the reference set-up for a GPU.
"""

import dataclasses
import pathlib
import shutil

from labquake_tf.data import pipeline, prepare
from labquake_tf.data.splits import PRETRAIN_RATIOS
from labquake_tf.evaluation import figures
from labquake_tf.evaluation.metrics import evaluate_model
from labquake_tf.files import (CONFIG_FILE, DATA_FOLDER, MANIFEST_FILE, METRICS_FILE, MODEL_FILE,
                               PLOTS_FOLDER)
from labquake_tf.models import PRESETS, build_tcn, input_length
from labquake_tf.serving.export import export_model
from labquake_tf.task import LabquakeRegressor
from labquake_tf.files import write_json
from labquake_tf.training.artifacts import reuse_prepared, save_model
from labquake_tf.training.config import TrainConfig
from labquake_tf.training.config import add_arguments as train_flags
from labquake_tf.training.config import from_args as config_from_args
from labquake_tf.training.strategy import get_strategy, is_chief
from labquake_tf.training.trainer import execution, resolve_jit_compile, train

DEFAULTS = dict(dataset="synthetic-biaxial", preset="small", targets=("shear_stress",),
                out="runs/pretrain", export_name="labquake-pretrain", epochs=10)


def pretrain(dataset=DEFAULTS["dataset"], out=DEFAULTS["out"], preset=DEFAULTS["preset"],
             targets=DEFAULTS["targets"], config=None, export_name=DEFAULTS["export_name"],
             export_dir="saved_models", split=PRETRAIN_RATIOS, data=None, **model_overrides):
    """The whole job; returns ``(task, summary)`` with test metrics and paths.

    ``data``: a prepared data dir (``labquake prepare``, or a run's ``RUN/data``) to
    train on instead of preparing ``dataset``; its window must cover the preset's.
    """
    config = config or TrainConfig(epochs=DEFAULTS["epochs"])
    # First: MultiWorkerMirroredStrategy must exist before any other TensorFlow op.
    strategy = get_strategy(config.strategy)
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    out = pathlib.Path(out)
    chief = is_chief(strategy)
    # Workers other than the chief train in a scratch dir of their own, dropped at the end.
    worker = "" if chief else f".{strategy.cluster_resolver.task_type}{strategy.cluster_resolver.task_id}"
    work = out.with_name(f"{out.name}{worker}.partial")
    model_kwargs = {**PRESETS[preset], **model_overrides}
    # A streamable model's windows carry its decoder's history too.
    window = input_length(model_kwargs["seq_len"], model_kwargs["kernel_size"],
                          model_kwargs["blocks"], model_kwargs.get("streamable", False))
    if data is None:
        data_dir = work / DATA_FOLDER
        manifest = prepare.prepare(dataset, data_dir, seq_len=window,
                                   targets=list(targets), split=split)
    else:
        data_dir = pathlib.Path(data).resolve()
        manifest = reuse_prepared(data_dir, window, targets)
        dataset = manifest.get("request", {}).get("dataset", manifest.get("dataset"))
    model_kwargs.update(n_features=len(manifest["feature_names"]), n_targets=len(targets))
    config = resolved(config, model_kwargs)
    work.mkdir(parents=True, exist_ok=True)
    write_json(work / MANIFEST_FILE, manifest)
    write_json(work / CONFIG_FILE, {"model": model_kwargs, "preset": preset,
                                      "dataset": dataset, "train": config.to_dict(),
                                      "execution": execution(
                                          model_kwargs["blocks"], config.jit_compile,
                                          model_kwargs.get("conv_impl", "auto")),
                                      **({"data_dir": str(data_dir)} if data else {})})

    kw = dict(seq_len=window, targets=list(targets), batch_size=config.batch_size)
    train_ds = pipeline.make_dataset(data_dir, "train", shuffle=True, seed=config.seed,
                                     repeat=config.steps_per_epoch is not None, **kw)
    val_ds = pipeline.make_dataset(data_dir, "val", **kw)
    model, history = train(lambda: build_tcn(**model_kwargs), train_ds, val_ds, config, work,
                           data_signature=manifest["request"])
    if not chief:
        shutil.rmtree(work, ignore_errors=True)
        return model, {}

    task = LabquakeRegressor.from_manifest(model, manifest, metadata={
        "preset": preset, "run": str(out.resolve()),
        "training": {"job": "pretrain", "dataset": dataset, "train": config.to_dict()}})
    save_model(task, work / MODEL_FILE)  # the run's model: the whole task
    (work / PLOTS_FOLDER).mkdir(exist_ok=True)
    figures.plot_history(history, work / PLOTS_FOLDER / "loss.png")
    scores, _ = evaluate_model(task, data_dir, "test", work / PLOTS_FOLDER)
    write_json(work / METRICS_FILE, scores)
    shutil.rmtree(out, ignore_errors=True)
    work.rename(out)

    export = export_model(task, export_name, base_dir=export_dir)
    return task, {"run": str(out), "export": str(export), "metrics": scores,
                  "epochs_run": len(history.get("loss", []))}


def resolved(config, model_kwargs):
    """``config`` with ``jit_compile="auto"`` decided, so the run's config.json says what ran."""
    return dataclasses.replace(
        config, jit_compile=resolve_jit_compile(config.jit_compile, model_kwargs["filters"]))


def add_arguments(parser):
    parser.add_argument("--dataset", default=DEFAULTS["dataset"],
                        help="registry name (synthetic-biaxial, p4581, ...) or record path")
    parser.add_argument("--data", default=None,
                        help="a prepared data dir (labquake prepare, or RUN/data of another "
                             "run) instead of preparing --dataset again")
    parser.add_argument("--preset", default=DEFAULTS["preset"], help="TCN preset (small, paper, ...; small-stream, paper-stream, ... "
                             "for the streamable variant)")
    parser.add_argument("--targets", default=",".join(DEFAULTS["targets"]),
                        help="comma-separated: shear_stress,ttsf,ttef")
    parser.add_argument("--out", default=DEFAULTS["out"], help="run dir")
    parser.add_argument("--export-name", default=DEFAULTS["export_name"],
                        help="model name under --export-dir")
    parser.add_argument("--export-dir", default="saved_models")
    train_flags(parser, epochs=DEFAULTS["epochs"])


def run(args):
    config = config_from_args(args)
    targets = tuple(t.strip() for t in args.targets.split(",") if t.strip())
    _, summary = pretrain(args.dataset, args.out, args.preset, targets, config,
                          args.export_name, args.export_dir, data=args.data)
    scores = summary.get("metrics", {})
    for name, m in scores.get("targets", {}).items():
        print(f"test {name}: RMSE {m['rmse']:.4g} {m['units']}, MAE {m['mae']:.4g} {m['units']}, "
              f"R2 {m['r2']:.3f} ({m['n_labelled']} labelled test steps)")
    if summary:
        print(f"run dir: {summary['run']}\nSavedModel: {summary['export']}")
    return 0
