"""``labquake finetune`` / ``labquake_tf.finetune(task, data)``: prepare the target
data, fine-tune heads on a pretrained decoder (``training.finetune``,
``training.ensemble``), calibrate their interval (``evaluation.intervals``), score,
and write the run dir; the result is a new ``LabquakeRegressor``.
"""

import argparse
import pathlib
import shutil

import keras
import numpy as np

from labquake_tf import TARGETS
from labquake_tf.data import pipeline, prepare
from labquake_tf.data.checks import ChannelError
from labquake_tf.data.record import channels_of, check_feature_names
from labquake_tf.data.scaling import MinMaxScaler
from labquake_tf.data.splits import parse_ratios
from labquake_tf.data.train_fraction import check_fraction, kept_events, training_windows
from labquake_tf.errors import UsageError
from labquake_tf.evaluation import intervals
from labquake_tf.evaluation.figures import plot_history
from labquake_tf.evaluation.metrics import evaluate_model
from labquake_tf.files import (CONFIG_FILE, DATA_FOLDER, MANIFEST_FILE, METRICS_FILE, MODEL_FILE,
                               PLOTS_FOLDER, atomic_dir, write_json)
from labquake_tf.models import Preprocessor, decoder_blocks, head_length, input_length
from labquake_tf.models import heads
from labquake_tf.task import LabquakeRegressor
from labquake_tf.training import config as config_lib
from labquake_tf.training import select
from labquake_tf.evaluation.calibration import calibrate, forward_windows, val_rmse
from labquake_tf.training.ensemble import fit_members
from labquake_tf.training.artifacts import reuse_prepared, save_model
from labquake_tf.training.config import TrainConfig
from labquake_tf.training.finetune import (DECODER_MODES, INPUT_NORM_MODES, adapt_input_norm,
                                           architecture, build_finetune_model, trainable_fraction)
from labquake_tf.training.strategy import get_strategy, set_precision
from labquake_tf.training.trainer import execution, model_width, resolve_jit_compile

CALIBRATIONS = ("forward", "val")
TRAINING = {"epochs": 300, "patience": 40}
"""Fine-tuning's training defaults where they differ from ``TrainConfig``'s (pretraining's).
Heads on a cached decoder train in seconds per epoch, and countdown targets need long
training: on p5198 TTsF the heads' best validation epoch was 85-96 of 100, and 300
epochs with patience 40 lowered the validation RMSE from 0.391 to 0.358 s (seed 0).
Shear stress heads stop at their best epoch (10-25) either way."""


def finetune_config(**overrides):
    """The fine-tuning ``TrainConfig``: ``TRAINING`` over TrainConfig's defaults."""
    return TrainConfig(**{**TRAINING, **overrides})


def finetune(pretrained, dataset=None, out_dir=None, target="shear_stress", blocks=None,
             seq_len=None, decoder="pretrained-frozen", split=(0.5, 0.1, 0.4), config=None,
             use_cache=True, input_norm="auto", ensemble=None, coverage=0.9,
             interval_score="auto", search="auto", calibration="forward", data=None,
             train_fraction=1.0, channel="auto"):
    """The whole job: prepare ``dataset`` (or reuse the prepared ``data`` dir, which must
    hold windows as long as any the job reads), build, fit, write a run dir; returns
    the fine-tuned ``LabquakeRegressor`` (``task.metadata["training"]``: the summary
    with validation and test metrics).

    ``pretrained``: a task, or anything ``LabquakeRegressor.from_preset`` takes.
    ``dataset`` may also be a prepared data dir (then it is ``data``). ``out_dir``
    defaults to ``runs/finetune-DATASET-TARGET``.

    ``ensemble`` heads (default ``heads.DEFAULT_MEMBERS`` with a frozen decoder, 1
    with a trainable one) are trained on one decoder pass and averaged; their interval
    at ``coverage`` (``evaluation.intervals``) is the task's ``intervals``. ``calibration="val"`` calibrates it on the final heads'
    validation errors; ``"forward"`` (default) fits a second ensemble of the same
    size on the earlier half of the training events (early-stopped on validation)
    and calibrates on its errors on the later half. On a drifting record the
    validation events, a few cycles right after training, understate the errors
    on test, farther away (p4581: 90 % validation interval, 67 % test coverage);
    forward errors come from events after those the heads learnt from, as on test.

    ``search`` ("auto": for TTsF/TTeF with a frozen decoder) picks whichever of
    ``blocks``/``seq_len`` is not given on the validation events (``training.select``),
    and, for a one-channel source on a record the job prepares, the AE ``channel``
    (``select.CHANNELS``; ``channel=N`` fixes it). The choice and every candidate's
    score land in ``config.json`` and ``metrics.json`` (``selection``); the task reads
    the chosen channel (its ``feature_names``) from raw records and streams.

    ``train_fraction`` (0 < f <= 1) trains on the last ``ceil(f * n)`` of the ``n``
    training events only (those nearest the validation part; val and test are
    unchanged): the data-limited sweep. Forward calibration then splits those kept
    events, or falls back to ``"val"`` when fewer than two are kept.

    ``out_dir`` appears only when the run completes.

    Example:
        >>> import labquake_tf as lq
        >>> task = lq.LabquakeRegressor.from_preset("synthetic-biaxial-small")  # doctest: +SKIP
        >>> mine = lq.finetune(task, "p5198", target="ttsf", blocks=2)          # doctest: +SKIP
    """
    config = config or finetune_config()
    if data is None and dataset is not None and (pathlib.Path(dataset) / MANIFEST_FILE).is_file():
        dataset, data = None, dataset
    if dataset is None and data is None:
        raise UsageError("fine-tuning needs data: a dataset name or record path, or a "
                         "prepared data dir (--dataset or --data)")
    if out_dir is None:
        name = dataset or pathlib.Path(data).name
        out_dir = f"runs/finetune-{pathlib.Path(str(name)).stem}-{target}"
    members = ensemble
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    coverage = intervals.check_coverage(coverage)
    if interval_score not in ("auto", *intervals.SCORES):
        raise ValueError(f"interval_score must be 'auto' or one of {intervals.SCORES}, "
                         f"got {interval_score!r}")
    if calibration not in CALIBRATIONS:
        raise ValueError(f"calibration must be one of {CALIBRATIONS}, got {calibration!r}")
    train_fraction = check_fraction(train_fraction)
    if members is None:
        members = heads.DEFAULT_MEMBERS if decoder != "trainable" else 1
    members = heads.check_members(members)
    if members > 1 and decoder == "trainable":
        raise UsageError(f"--ensemble {members} needs a frozen decoder (the heads share it); "
                         "use --ensemble 1 with --decoder trainable")
    source_task = (pretrained if isinstance(pretrained, LabquakeRegressor)
                   else LabquakeRegressor.from_preset(pretrained))
    source = source_task.network
    # what messages and the summary call the source: its path or preset, never a repr
    source_name = str(source_task.metadata.get("loaded_from") or f"task {source_task.name!r}")
    arch = architecture(source)
    use_cache = use_cache and decoder != "trainable"
    if search == "auto":  # the search trains heads on the cached decoder: frozen only
        search = target in select.TARGETS and decoder != "trainable"
    search = bool(search) and not (blocks and seq_len)
    n_source, source_len = len(decoder_blocks(source)), head_length(source)

    def window_of(length, depth):
        # The windows the model reads: seq_len, plus a streamable decoder's history.
        return input_length(length, arch["kernel_size"], depth, arch["streamable"])

    block_list, seq_list = select.candidates(n_source, source_len, blocks, seq_len)
    prepared_len = (max(window_of(s, b) for s in seq_list for b in block_list) if search
                    else window_of(seq_len or source_len, blocks or n_source))

    # Features are matched by name: the target record is read with the source's channels,
    # or the one channel asked for, or each channel in turn when the search chooses it.
    names = source_task.preprocessor.feature_names
    kind = source_task.preprocessor.feature_kind
    channel = select.check_channel(channel, channels_of(names), source_name)
    channels = [channel] if channel != "auto" else channels_of(names)
    expected = names if channel == "auto" else [f"{kind}_ch{channel}"]
    search_channels = search and channel == "auto" and data is None and len(channels or ()) == 1
    prepare_options = dict(targets=[target], split=split, features=kind)
    # The run dir appears whole when the job completes; a failure leaves nothing.
    with atomic_dir(out_dir) as work:
        if data is None:
            data_dir = work / DATA_FOLDER
            manifest = prepare.prepare(dataset, data_dir, seq_len=prepared_len,
                                       channels=channels, **prepare_options)
        else:
            data_dir = pathlib.Path(data).resolve()
            manifest = reuse_prepared(data_dir, prepared_len, [target])
            dataset = manifest.get("request", {}).get("dataset", dataset)
        check_feature_names(expected, manifest["feature_names"], source_name, f"{dataset}")

        def arrays(folder, length):
            xy = [_arrays(folder, s, config.batch_size, length) for s in ("train", "val")]
            if train_fraction < 1:
                xy[0] = training_windows(folder, length, train_fraction)[0]
            return xy

        train_xy, val_xy = arrays(data_dir, prepared_len)
        if train_fraction < 1 and calibration == "forward" and len(
                kept_events(data_dir, train_fraction)) < 2:
            print(f"train_fraction {train_fraction}: fewer than two training events kept; "
                  "calibrating on validation instead of forward")
            calibration = "val"
        selection = None
        if search:
            scale = float(MinMaxScaler.from_dict(manifest["scaler"]["targets"]).scale[0])
            choice, table = select.search(source, train_xy, val_xy, scale, config, blocks, seq_len)
            best_rmse = min(r["val_rmse"] for r in table)
            if search_channels:  # the record's other channels, prepared and searched alike
                table = [{"channel": channels[0], **r} for r in table]
                choice = {"channel": channels[0], **choice}
                for other in select.other_channels(channels[0]):
                    folder = work / f"{DATA_FOLDER}-ch{other}"
                    try:
                        found = prepare.prepare(dataset, folder, seq_len=prepared_len,
                                                channels=[other], **prepare_options)
                    except ChannelError:  # the record has no more channels
                        break
                    xy = arrays(folder, prepared_len)
                    c_choice, c_table = select.search(source, *xy, scale, config, blocks, seq_len)
                    table += [{"channel": other, **r} for r in c_table]
                    c_best = min(r["val_rmse"] for r in c_table)
                    if c_best < best_rmse:
                        best_rmse = c_best
                        shutil.rmtree(data_dir)
                        folder.rename(data_dir)
                        choice, manifest = {"channel": other, **c_choice}, found
                        train_xy, val_xy = xy
                    shutil.rmtree(folder, ignore_errors=True)
            selection = {"chosen": choice, "candidates": table, "score": "val_rmse"}
            print("chose " + ", ".join(f"{k}={v}" for k, v in choice.items()) + " on validation "
                  f"(RMSE {best_rmse:.4g}) of {len(table)} candidates")
            blocks, seq_len = choice["blocks"], choice["seq_len"]
            if window_of(seq_len, blocks) != prepared_len:
                if data is None:
                    manifest = prepare.prepare(dataset, data_dir,
                                               seq_len=window_of(seq_len, blocks), force=True,
                                               channels=channels_of(manifest["feature_names"]),
                                               **prepare_options)
                else:  # a prepared dir given by the user is read, never rewritten
                    manifest = reuse_prepared(data_dir, window_of(seq_len, blocks), [target])
                train_xy, val_xy = arrays(data_dir, window_of(seq_len, blocks))
        blocks = blocks or n_source
        seq_len = seq_len or source_len

        strategy = get_strategy(config.strategy)
        set_precision(config.precision)
        keras.utils.set_random_seed(config.seed)
        with strategy.scope():
            model = build_finetune_model(source, seq_len, blocks, decoder=decoder,
                                         input_norm=input_norm)
        norm_source = model.input_norm_source
        if norm_source in ("refit", "adapt"):
            adapt_input_norm(model, train_xy[0])
        with strategy.scope():
            model = heads.add_heads(model, members, seed=config.seed)
        fraction = trainable_fraction(model)
        print(f"fine-tuning {blocks} block(s) of {source_name} on {dataset}/{target}: "
              f"{fraction:.2%} of {model.count_params():,} parameters trainable "
              f"(decoder {decoder}, {'cached' if use_cache else 'plain'} path, {members} head(s))")

        history = fit_members(model, train_xy, val_xy, config, work, use_cache)[0]
        preprocessor = Preprocessor.from_manifest(manifest, int(model.input_shape[1]))
        cal_model, cal_xy, where = model, val_xy, "val"
        if calibration == "forward":
            early, late = forward_windows(data_dir, int(model.input_shape[1]), train_fraction)
            with strategy.scope():
                twin = build_finetune_model(source, seq_len, blocks, decoder=decoder,
                                            input_norm=input_norm)
            if twin.input_norm_source in ("refit", "adapt"):
                adapt_input_norm(twin, early[0])
            with strategy.scope():
                cal_model = heads.add_heads(twin, members, seed=config.seed)
            fit_members(cal_model, early, val_xy, config, work / "forward", use_cache)
            shutil.rmtree(work / "forward", ignore_errors=True)
            cal_xy, where = late, "train, later half (heads fit on the earlier half)"
        calibrated = calibrate(cal_model, cal_xy, preprocessor, coverage, interval_score,
                               where=where)
        if cal_model is not model:
            calibrated["calibration"]["val_rmse"] = {
                "heads": val_rmse(model, val_xy, preprocessor),
                "twin": val_rmse(cal_model, val_xy, preprocessor)}
        source_data = source_task.metadata.get("data") or {}
        summary = {"from": source_name,
                   "source_dataset": source_data.get("dataset"),
                   "dataset": dataset, "target": target, "blocks": blocks, "seq_len": seq_len,
                   "feature_names": list(manifest["feature_names"]),
                   "decoder": decoder, "split": list(split), "cached": use_cache,
                   "input_norm": norm_source,
                   "ensemble": members, "coverage": coverage, "calibration": calibration,
                   "train_fraction": train_fraction,
                   "selection": selection,
                   "trainable_fraction": fraction,
                   "trainable_params": int(sum(np.prod(w.shape)
                                               for w in model.trainable_weights)),
                   "total_params": int(model.count_params()),
                   "epochs_run": len(history.get("loss", []))}
        task = LabquakeRegressor(model, preprocessor, calibrated, {
            "data": manifest, "run": str(pathlib.Path(out_dir).resolve()),
            "training": {"job": "finetune", **summary, "train": config.to_dict()}})
        write_json(work / MANIFEST_FILE, manifest)
        write_json(work / CONFIG_FILE,
                   {"model": dict(seq_len=seq_len, blocks=blocks, n_targets=1,
                                  **architecture(model)),
                    "preset": None, "train": config.to_dict(), "finetune": summary,
                    "execution": execution(blocks, resolve_jit_compile(
                        config.jit_compile, model_width(model))),
                    **({"data_dir": str(data_dir)} if data else {})})
        (work / PLOTS_FOLDER).mkdir(exist_ok=True)
        plot_history(history, work / PLOTS_FOLDER / "loss.png")
        summary["metrics"] = {s: evaluate_model(task, data_dir, s, work / PLOTS_FOLDER,
                                                title=dataset)[0]
                              for s in ("val", "test")}
        task.metadata["training"]["metrics"] = summary["metrics"]
        save_model(task, work / MODEL_FILE)  # the run's model: the whole task
        write_json(work / METRICS_FILE,
                   {**summary["metrics"], **({"selection": selection} if selection else {})})
    return task


def _arrays(data_dir, split, batch_size, seq_len=None):
    """A split's windows as numpy: the input_norm statistics and the cache need them whole."""
    xs, ys = [], []
    for x, y in pipeline.iterate(pipeline.make_dataset(data_dir, split, seq_len=seq_len,
                                                       batch_size=max(batch_size, 512))):
        xs.append(x.numpy())
        ys.append(y.numpy())
    if not xs:
        raise ValueError(f"{data_dir}: split {split!r} has no windows")
    return np.concatenate(xs), np.concatenate(ys)


def add_arguments(parser):
    parser.add_argument("--from", dest="pretrained", required=True,
                        help="a pretrained preset name (labquake presets), preset folder, run "
                             "dir, exported SavedModel version dir or .keras file")
    parser.add_argument("--dataset", default=None,
                        help="dataset name (e.g. p4581) or record path (or --data)")
    parser.add_argument("--target", choices=TARGETS, default="shear_stress")
    parser.add_argument("--blocks", type=int, default=None,
                        help="decoder blocks to keep (default: all of the pretrained model's)")
    parser.add_argument("--seq-len", type=int, default=None,
                        help="window length in steps (default: the pretrained model's)")
    parser.add_argument("--decoder", choices=DECODER_MODES, default="pretrained-frozen")
    parser.add_argument("--split", default="0.5,0.1,0.4",
                        help="train,val,test fractions of the events (default 0.5,0.1,0.4)")
    parser.add_argument("--out", default=None, help="run dir (default runs/finetune-DATASET-TARGET)")
    parser.add_argument("--input-norm", choices=INPUT_NORM_MODES, default="auto",
                        help="the pretrained input normalisation: copied at the same window "
                             "length, its last steps' for a shorter one, refitted for a longer "
                             "one (auto); or force one")
    parser.add_argument("--no-cache", action="store_true",
                        help="run the frozen decoder every step instead of caching its output")
    parser.add_argument("--search", choices=("auto", "on", "off"), default="auto",
                        help="choose --blocks/--seq-len/--channel (those not given) on the "
                             "validation events; auto: for ttsf/ttef with a frozen decoder")
    parser.add_argument("--channel", default="auto",
                        help="the AE channel (1-based) a one-channel source reads on the target "
                             "record; auto: the source's, or each of the record's first "
                             f"{len(select.CHANNELS)} when searching")
    parser.add_argument("--ensemble", type=_positive_int, default=None, metavar="N",
                        help=f"heads trained on the one frozen decoder and averaged (default "
                             f"{heads.DEFAULT_MEMBERS}; 1 with --decoder trainable)")
    parser.add_argument("--coverage", type=_coverage, default=0.9,
                        help="coverage of the split-conformal interval, in (0, 1) (default 0.9)")
    parser.add_argument("--calibration", choices=CALIBRATIONS, default="forward",
                        help="conformal calibration windows: forward (default: heads fit on "
                             "the earlier half of the training events, scored on the later "
                             "half) or val (the final heads on the validation events)")
    parser.add_argument("--interval-score", choices=("auto", "constant", "normalized"),
                        default="auto", help="conformity score: |error| (constant width) or "
                        "|error| / member spread; auto: constant with --calibration forward, "
                        "else the better of a cross-fit on the calibration windows")
    parser.add_argument("--data", default=None,
                        help="a prepared data dir (labquake prepare --targets TARGET) instead "
                             "of preparing --dataset again")
    config_lib.add_arguments(parser, verbose=2, **TRAINING)


def run(args):
    if not (args.dataset or args.data):
        raise SystemExit("labquake finetune: give --dataset NAME or --data PREPARED_DIR")
    config = config_lib.from_args(args)
    name = args.dataset or pathlib.Path(args.data).name
    out = args.out or f"runs/finetune-{pathlib.Path(name).stem}-{args.target}"
    task = finetune(args.pretrained, args.dataset, out, target=args.target,
                          blocks=args.blocks, seq_len=args.seq_len, decoder=args.decoder,
                          split=parse_ratios(args.split), config=config,
                          use_cache=not args.no_cache, input_norm=args.input_norm,
                          ensemble=args.ensemble, coverage=args.coverage,
                          interval_score=args.interval_score,
                          search={"on": True, "off": False}.get(args.search, "auto"),
                          calibration=args.calibration, data=args.data, channel=args.channel)
    summary = task.metadata["training"]
    test = summary["metrics"]["test"]
    print(f"wrote {out}; trainable {summary['trainable_fraction']:.2%}; test: "
          + ", ".join(f"{k}={v:.4g}" for k, v in _flat(test).items()))
    return 0


def _positive_int(text):
    try:
        return heads.check_members(int(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive number of heads, got {text!r}") from None


def _coverage(text):
    try:
        return intervals.check_coverage(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _flat(metrics):
    """The physical-unit RMSE/R2 of each target, for the one-line summary."""
    out = {}
    for name, m in metrics.get("targets", {}).items():
        for key in ("rmse", "r2", "coverage", "width"):
            if key in m:
                out[f"{name}_{key}"] = m[key]
    return out
