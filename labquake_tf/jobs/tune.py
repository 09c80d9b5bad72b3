"""``labquake tune``: a KerasTuner search over the TCN and its training recipe.

Writes the KerasTuner project (resumable), ``trials.csv`` / ``trials.md`` /
``score_vs_trial.png`` into the project dir, and exports the best model to
``saved_models/NAME/VERSION``. Run the same command with the ``KERASTUNER_*``
variables set for a chief/worker search (see ``tuning/search.py``): workers only run
trials; the chief writes the results.
"""

import pathlib
import time

import keras

from labquake_tf.data import prepare, splits
from labquake_tf.data.scaling import MinMaxScaler
from labquake_tf.files import DATA_FOLDER
from labquake_tf.models import input_length
from labquake_tf.serving.export import export_model
from labquake_tf.training import config as config_lib
from labquake_tf.task import LabquakeRegressor
from labquake_tf.training import finetune, get_strategy, set_precision
from labquake_tf.tuning import objective as objective_lib
from labquake_tf.tuning import results, search
from labquake_tf.tuning.hypermodel import FrozenDecoderHyperModel, TCNHyperModel
from labquake_tf.tuning.space import load_space, values


def add_arguments(parser):
    parser.add_argument("--dataset", default="synthetic-dds",
                        help="dataset name or record path, prepared into PROJECT_DIR/data")
    parser.add_argument("--data", default=None,
                        help="an already prepared data dir instead (labquake prepare); "
                             "use this for chief/worker runs so only one process prepares")
    parser.add_argument("--tuner", choices=sorted(search.TUNERS), default="hyperband")
    parser.add_argument("--objective", choices=objective_lib.OBJECTIVES, default="val_loss",
                        help="val_rmse_phys: validation RMSE in physical units, mean over targets")
    parser.add_argument("--max-trials", type=int, default=10)
    parser.add_argument("--max-epochs", type=int, default=10,
                        help="epochs per trial (Hyperband: of the longest bracket)")
    parser.add_argument("--time-limit", type=float, default=None, metavar="SECONDS",
                        help="launch no trial after this many seconds")
    parser.add_argument("--space", default=None, help="search-space JSON (defaults: search_space.json)")
    parser.add_argument("--targets", nargs="+", default=None)
    parser.add_argument("--project-dir", default=None,
                        help="search state, data and results (default tuning/DATASET-TUNER)")
    parser.add_argument("--overwrite", action="store_true",
                        help="start afresh instead of resuming the project dir")
    parser.add_argument("--from", dest="pretrained", default=None,
                        help="tune the head on top of this pretrained model's frozen decoder")
    parser.add_argument("--blocks", type=int, default=None,
                        help="with --from: how many pretrained blocks to keep")
    parser.add_argument("--name", default=None,
                        help="export name under --export-dir (default: the project dir's name)")
    parser.add_argument("--export-dir", default="saved_models")
    parser.add_argument("--no-export", action="store_true")
    parser.add_argument("--streamable", action="store_true",
                        help="search the streamable TCN variant (build_tcn(streamable=True))")
    # Epochs are --max-epochs; hyperparameters in the search space override their flags.
    config_lib.add_arguments(parser, skip=("epochs",), verbose=0)


def run(args):
    if args.pretrained and not args.blocks:
        raise SystemExit("labquake tune: --from needs --blocks K")
    if args.strategy == "multiworker":
        raise SystemExit("labquake tune: --strategy multiworker is not for searches; run "
                         "KerasTuner's chief/worker set-up instead (see the module docstring)")
    config = config_lib.from_args(args, epochs=args.max_epochs)
    set_precision(config.precision)
    keras.utils.set_random_seed(config.seed)
    project = pathlib.Path(args.project_dir or
                           f"tuning/{pathlib.Path(args.dataset).stem}-{args.tuner}")
    space = load_space(args.space)
    source = LabquakeRegressor.from_preset(args.pretrained) if args.pretrained else None
    data_dir = args.data or prepare_data(args.dataset, project / DATA_FOLDER, space, args, source)
    hyper_kwargs = dict(space=space, targets=args.targets, config=config,
                        physical_rmse=args.objective == "val_rmse_phys", seed=args.seed,
                        streamable=getattr(args, "streamable", False))
    if args.pretrained:
        hypermodel = FrozenDecoderHyperModel(source, data_dir, args.blocks, **hyper_kwargs)
    else:
        hypermodel = TCNHyperModel(data_dir, **hyper_kwargs)
    tuner = search.make_tuner(
        args.tuner, hypermodel, objective_lib.objective(args.objective), project / "search",
        max_trials=args.max_trials, max_epochs=args.max_epochs, overwrite=args.overwrite,
        strategy=get_strategy(config.strategy), seed=args.seed)
    search.stop_after(tuner, args.time_limit)

    start = time.monotonic()
    early_stop = keras.callbacks.EarlyStopping(monitor=args.objective, mode="min", patience=args.patience)
    tuner.search(epochs=args.max_epochs, callbacks=[early_stop], verbose=config.verbose)
    if not search.is_coordinator(tuner):
        return 0  # a worker: the chief holds the trials and writes the results

    rows = results.write_summary(tuner.oracle, project)
    print(results.markdown_table(rows, list(rows[0]) if rows else []))
    print(f"{len(rows)} trials in {time.monotonic() - start:.0f} s; summary in {project}")
    if not args.no_export:
        path = export_best(tuner, hypermodel, args.name or project.name, args)
        print(f"best model exported to {path}")
    return 0


def prepare_data(dataset, data_dir, space, args, source=None):
    """Shards long enough for the longest seq_len in the space (shorter ones reuse them)."""
    ratios = splits.FINETUNE_RATIOS if source is not None else splits.PRETRAIN_RATIOS
    prepare.prepare(dataset, data_dir, seq_len=longest_window(space, args, source),
                    targets=args.targets, split=ratios, force=args.overwrite)
    return data_dir


def longest_window(space, args, source=None):
    """The longest input a trial can read: a streamable model's carries its decoder's history."""
    seq_len = max(values(space["seq_len"]))
    kernel, blocks = max(values(space["kernel_size"])), max(values(space["blocks"]))
    streamable = getattr(args, "streamable", False)
    if source is not None:
        arch = finetune.architecture(source.network)
        kernel, blocks, streamable = arch["kernel_size"], args.blocks, arch["streamable"]
    return input_length(seq_len, kernel, blocks, streamable)


def export_best(tuner, hypermodel, name, args):
    """The best trial's best-epoch checkpoint as a task, exported."""
    best = tuner.oracle.get_best_trials(1)
    if not best:
        raise SystemExit(f"labquake tune: no trial in {tuner.project_dir} finished; nothing to export")
    model = tuner.load_model(best[0])
    manifest = model_manifest(hypermodel.manifest, hypermodel.targets,
                              int(model.input_shape[1]))
    tuning = {"tuner": args.tuner, "objective": args.objective, "score": best[0].score,
              "trial": best[0].trial_id, "hyperparameters": best[0].hyperparameters.values,
              "project_dir": str(pathlib.Path(tuner.project_dir).resolve())}
    task = LabquakeRegressor.from_manifest(model, manifest, metadata={"tuning": tuning})
    return export_model(task, name, base_dir=args.export_dir)


def model_manifest(manifest, targets, seq_len):
    """The data manifest as the tuned model sees it: its window and its targets.

    The shards may be prepared for longer windows and more targets than the
    best trial uses; the export must describe the model, not the shards.
    """
    scaler = MinMaxScaler.from_dict(manifest["scaler"]["targets"]).select(targets)
    return {**manifest, "seq_len": int(seq_len), "target_names": list(targets),
            "scaler": {**manifest["scaler"], "targets": scaler.to_dict()}}
