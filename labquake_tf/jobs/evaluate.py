"""``labquake evaluate MODEL [--dataset NAME] --split test``: scores in MPa and s, with plots.

A run is scored on its own data: a run dir's prepared shards (``RUN/data``, or
the ``data_dir`` its config records), never a dataset prepared again by name
(a file-path or ``--seed 7`` record shares its name with others, and another
split ratio would put training events in "test"). An export carries no data:
its manifest's ``request`` (record path or name + sha256, channels, processing
options, window, targets, split ratios) prepares the same shards again, and a
record whose sha256 changed is refused. A run dir whose data is gone is an error.

On another dataset (``--dataset``, zero-shot) the record is prepared with the
run's window, targets, channels and processing options (split 5:1:4 unless
``--ratios``); inputs are scaled with the run's FEATURE scaler and outputs
inverted with the model's own TARGET scaler, exactly as the model was trained
and as its export serves. Features are matched by name: a mismatch is an error.

``--data DIR`` scores on a prepared data dir given explicitly (``labquake
prepare``, another run's ``RUN/data``), as it is: it must hold the run's features
and targets in windows at least as long as the model's; the interval is scored
only when it is the run's own data (same scalers and splits).

Writes ``OUT/metrics.json`` (per target: RMSE, MAE, R² in physical units and
scaled, on every labelled step of the split by that target's own mask; the
calibrated interval's coverage and mean width when the run has one and the data
is its own; event-level scores for ``ttsf``/``ttef``), ``OUT/predictions.csv`` and
``OUT/plots/`` (prediction vs truth over time with a scatter, per target; the
loss curves when MODEL is a run dir with ``history.csv``).
"""

import csv
import pathlib

from labquake_tf.data.pipeline import load_manifest
from labquake_tf.data.record import check_feature_names
from labquake_tf.data.splits import parse_ratios
from labquake_tf.errors import DataError, UsageError
from labquake_tf.evaluation import figures
from labquake_tf.evaluation.metrics import evaluate_model
from labquake_tf.files import (CONFIG_FILE, DATA_FOLDER, HISTORY_FILE, MANIFEST_FILE,
                               METRICS_FILE, MODEL_FILE, PLOTS_FOLDER, SAVED_MODEL, atomic_dir,
                               read_history, read_json, write_json)
from labquake_tf.models import saving
from labquake_tf.task import LabquakeRegressor


def run_data_dir(model_path, manifest):
    """The prepared shards a run trained on, ``RUN/data`` (or the ``data_dir`` its
    config records, for a run trained with ``--data``); None for anything else (an
    export or preset carries no data: its request prepares it again).

    The folder must hold the manifest the run trained on (same scalers and splits),
    or scoring would not be on the run's own split.
    """
    base = pathlib.Path(model_path)
    base = base.parent if base.suffix == ".keras" else base
    if (base / SAVED_MODEL).exists() or not (base / MODEL_FILE).exists():
        return None
    candidates = [base / DATA_FOLDER]
    if (base / CONFIG_FILE).exists():
        recorded = read_json(base / CONFIG_FILE).get("data_dir")
        if recorded:
            candidates.append(pathlib.Path(recorded))
    for data in candidates:
        if (data / MANIFEST_FILE).exists():
            theirs = read_json(data / MANIFEST_FILE)
            for key in ("feature_names", "scaler", "splits"):  # the most telling first
                if key in manifest and theirs.get(key) != manifest[key]:
                    raise DataError(f"{data}: its manifest's {key!r} differs from the run's "
                                    f"{base / MANIFEST_FILE}: not the data the run trained on")
            return data
    raise DataError(
        f"{base}: the run's prepared data is missing (looked for "
        f"{', '.join(str(c / MANIFEST_FILE) for c in candidates)}); restore it, or rebuild it "
        "with `labquake prepare` and the arguments in the run's manifest.json 'request'")


def evaluate(model_path, dataset=None, split="test", out=None, ratios=None, data=None):
    """The whole command: load, find or prepare the data, score, write ``out``; returns
    ``(metrics, out)``.

    ``data``: a prepared data dir to score on instead (``labquake prepare``, or another
    run's ``RUN/data``); it must hold the run's features and targets, in windows at
    least as long as the model's.
    """
    if data is not None and (dataset is not None or ratios is not None):
        raise UsageError("--data is a prepared dir: its dataset and split are fixed; "
                         "give --dataset/--ratios or --data, not both")
    task = LabquakeRegressor.from_preset(model_path)
    manifest = task.metadata.get("data") or {}
    base = pathlib.Path(model_path)
    base = base.parent if base.suffix == ".keras" else base
    if not base.exists() or (base / SAVED_MODEL).exists() or saving.versions(base):
        # never inside an export or preset, which TF Serving reads
        base = pathlib.Path("runs") / (base.name if not base.name.isdigit() else base.parent.name)
    name = (pathlib.Path(data).resolve().name if data is not None
            else dataset or manifest.get("dataset") or "data")
    out = pathlib.Path(out or base / f"eval-{pathlib.Path(str(name)).stem}-{split}")
    if data is not None:
        data_manifest = load_manifest(data)
        check_feature_names(task.preprocessor.feature_names, data_manifest["feature_names"],
                            f"{model_path}", f"{data}")
        check_matches_run(data, data_manifest, model_path, task.preprocessor.target_names,
                          task.preprocessor.input_len)
    elif task.is_own_data(dataset, ratios):
        data = run_data_dir(model_path, manifest)
    # task.evaluate's steps, inside one scoring_data: data prepared again lives in a
    # temporary dir, whose manifest is read below before it goes
    scoring = task.scoring_data(data if data is not None else dataset,
                                None if data is not None else ratios)
    with atomic_dir(out) as work, scoring as (data_dir, described, own):
        (work / PLOTS_FOLDER).mkdir()
        result, p = evaluate_model(task, data_dir, split, work / PLOTS_FOLDER,
                                   title=f"{described}/{split}", intervals=own)
        history = base / HISTORY_FILE
        if history.exists():
            figures.plot_history(read_history(history), work / PLOTS_FOLDER / "loss.png")
        data_manifest = load_manifest(data_dir)
        result.update(model=str(model_path), dataset=str(described),
                      split_ratios=list(data_manifest.get("request", {}).get("split", [])),
                      data=str(data_dir) if ".labquake-eval-" not in str(data_dir)
                      else "prepared again from the run's request",
                      n_labelled_split=data_manifest["splits"][split].get("n_labelled"))
        write_json(work / METRICS_FILE, result)
        _write_predictions(work / "predictions.csv", p)
    return result, out


def check_matches_run(data_dir, data_manifest, model_path, target_names, window):
    """A prepared dir given with ``--data`` holds the run's targets, in its order (its
    outputs are read by position), and windows of the ``window`` steps the model reads
    (a shorter context would drop the split's first labelled steps)."""
    ours, theirs = list(target_names), list(data_manifest["target_names"])
    if ours != theirs:
        raise DataError(f"{data_dir}: prepared for targets {theirs}, {model_path} predicts "
                        f"{ours}; prepare it with --targets {' '.join(ours)}")
    if int(data_manifest["seq_len"]) < window:
        raise DataError(f"{data_dir}: prepared for windows of {data_manifest['seq_len']} "
                        f"steps, {model_path} reads {window}; prepare it again with "
                        f"--seq-len {window}")


def _write_predictions(path, p):
    """One row per window end where any target is labelled; a target's ``_true`` is
    empty where it is not a label (its score skips that row); ``_lower``/``_upper``
    when the run has a calibrated interval."""
    kinds = ("true", "pred", "lower", "upper") if "lower" in p else ("true", "pred")
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["time", *(f"{n}_{kind}" for n in p["names"] for kind in kinds)])
        for t, *rows in zip(p["time"], *(p[k] for k in kinds)):
            writer.writerow([f"{t:.6f}", *("" if v != v else f"{v:.6g}"
                                           for group in zip(*rows) for v in group)])


def add_arguments(parser):
    parser.add_argument("model", help="a preset name (labquake presets), preset folder, run "
                        "dir, exported SavedModel version dir or .keras file")
    parser.add_argument("--dataset", default=None,
                        help="dataset name or record path to score zero-shot (default: the "
                             "run's own prepared data)")
    parser.add_argument("--data", default=None,
                        help="a prepared data dir to score on (labquake prepare, or another "
                             "run's RUN/data), with the run's features and targets")
    parser.add_argument("--split", default="test", choices=("train", "val", "test"))
    parser.add_argument("--ratios", default=None,
                        help="train,val,test event ratios (default: the run's own split on "
                             "its data, 0.5,0.1,0.4 elsewhere)")
    parser.add_argument("--out", default=None, help="output dir (default: beside the model; "
                        "runs/NAME/ for an exported SavedModel)")


def run(args):
    ratios = parse_ratios(args.ratios) if args.ratios else None
    result, out = evaluate(args.model, args.dataset, args.split, args.out, ratios, args.data)
    for name, m in result["targets"].items():
        line = (f"{name}: RMSE {m['rmse']:.4g} {m['units']}, MAE {m['mae']:.4g}, R² {m['r2']:.4f}"
                f" (scaled RMSE {m['rmse_scaled']:.4g})")
        if "coverage" in m:
            line += (f"; {m['interval_target']:.0%} interval covers {m['coverage']:.1%}, "
                     f"mean width {m['width']:.4g} {m['units']}")
            line += "".join(f", {phase.replace('_', ' ')} {c['coverage']:.1%}"
                            for phase, c in m.get("coverage_by_phase", {}).items())
        if name in result["events"]:
            line += f"; per-event failure-time MAE {result['events'][name]['mae_s']:.3g} s"
        print(line)
    print(f"wrote {out}/metrics.json, predictions.csv, plots/")
    return 0
