"""The runs ``jobs.reproduce`` checks the paper's claims with, one function per kind.

Each takes plain arguments and returns a JSON-able dict of scores, so that
``jobs.reproduce`` can run them in worker processes and keep each one's result as
a file (a rerun skips finished pieces). Every score is on the run's test split, every
labelled step (``evaluation.metrics.evaluate_model``, what ``metrics.json`` holds).
"""

import csv
import pathlib

import keras
import numpy as np

from labquake_tf.data.pipeline import load_manifest, split_arrays
from labquake_tf.data.scaling import MinMaxScaler
from labquake_tf.data.train_fraction import kept_events
from labquake_tf.evaluation.metrics import evaluate_model
from labquake_tf.files import CONFIG_FILE, DATA_FOLDER, HISTORY_FILE, read_json
from labquake_tf.jobs.finetune import finetune, finetune_config
from labquake_tf.jobs.pretrain import pretrain
from labquake_tf.jobs.transfer_matrix import transfer_matrix
from labquake_tf.task import LabquakeRegressor
from labquake_tf.training import TrainConfig

DEFAULT_SOURCE = "synthetic-biaxial-small"
"""The simulator-pretrained source: the shipped preset (never retrained here)."""

# What runs, for which claim (``jobs.reproduce.plan`` makes the pieces, the report reads them)
HEADLINE = (("p4581", "shear_stress"), ("p5198", "ttsf"))
DEFAULTS = HEADLINE + (("p4581", "ttsf"), ("p4581", "ttef"))
ABLATION = (("p4581", "shear_stress"), ("p5198", "ttsf"))
ABLATION_WINDOW = dict(blocks=3, seq_len=32)  # one depth and window (inside its 43-step field)
SWEEP = ("p4581", "shear_stress")
FRACTIONS = (0.1, 0.25, 0.5, 1.0)
WANG = "p4581"
"""The smaller experiment: 31 events (16 for training) against p5198's 46 (23), about
the same number of steps."""
LAB_SOURCES = ("p4581", "p5198")


def default_finetune(out, dataset, target, seed, epochs=None):
    """The default fine-tune (every argument but the seed left to ``finetune``'s default;
    ``epochs`` only for a smoke run) and its test scores."""
    config = finetune_config(seed=seed, verbose=0, **({} if epochs is None else {"epochs": epochs}))
    task = finetune(DEFAULT_SOURCE, dataset, out, target=target, config=config)
    return _scores(task, out, target)


def ablation(out, dataset, target, decoder, seed, epochs, blocks, seq_len):
    """One decoder mode (``training.finetune.DECODER_MODES``), one head, fixed
    blocks/window: the test scores and the validation-loss curve."""
    task = finetune(DEFAULT_SOURCE, dataset, out, target=target, blocks=blocks, seq_len=seq_len,
                    decoder=decoder, config=TrainConfig(seed=seed, verbose=0, epochs=epochs),
                    ensemble=1, search=False, calibration="val")
    return {**_scores(task, out, target), "val_loss": _val_loss(out)}


def limited(out, dataset, target, mode, fraction, seed, epochs, blocks, seq_len, source=None):
    """Fine-tune on the last ``fraction`` of the training events: ``mode``
    "pretrained-frozen" (one head on the frozen ``source`` decoder) or "from-scratch"
    (the same architecture, re-initialised, all of it trained)."""
    source = source or DEFAULT_SOURCE
    config = TrainConfig(seed=seed, verbose=0, epochs=epochs)
    common = dict(target=target, blocks=blocks, seq_len=seq_len, config=config, ensemble=1,
                  search=False, calibration="val", train_fraction=fraction)
    if mode == "from-scratch":
        task = finetune(scratch_source(source, seed), dataset, out, decoder="trainable",
                        input_norm="refit", **common)
    elif mode == "pretrained-frozen":
        task = finetune(source, dataset, out, decoder="pretrained-frozen", **common)
    else:
        raise ValueError(f"mode must be pretrained-frozen or from-scratch, got {mode!r}")
    return {**_scores(task, out, target), "fraction": fraction,
            "n_train_windows": _training_events(out, fraction)}


def scratch_source(source, seed):
    """``source``'s architecture and preprocessor with freshly initialised weights."""
    task = LabquakeRegressor.from_preset(source) if not isinstance(
        source, LabquakeRegressor) else source
    keras.utils.set_random_seed(seed)
    network = keras.models.clone_model(task.network)  # new layers: new initial weights
    return LabquakeRegressor(network, task.preprocessor, None,
                             {"loaded_from": f"{source} (re-initialised, seed {seed})",
                              "data": task.metadata.get("data")})


def lab_source(out, dataset, epochs, seed=0, preset="small"):
    """A short shear-stress pretraining on a lab record (a transfer source)."""
    config = TrainConfig(seed=seed, verbose=0, epochs=epochs)
    _, summary = pretrain(dataset, out, preset=preset, targets=("shear_stress",), config=config,
                          export_name=f"reproduce-{dataset}",
                          export_dir=pathlib.Path(out).parent / "exports")
    m = summary["metrics"]["targets"]["shear_stress"]
    return {"run": str(out), "rmse": m["rmse"], "r2": m["r2"], "epochs_run":
            summary["epochs_run"]}


def zero_shot(source, dataset, target="shear_stress"):
    """``source`` applied to ``dataset``'s test split as it is: in physical units with
    its own scalers, and in the paper's scaled units (inputs and target min-max scaled
    with scalers fitted on the target's training part), which take out the level."""
    task = LabquakeRegressor.from_preset(source)
    with task.scoring_data(dataset, None) as (data_dir, _, _):
        own, _ = evaluate_model(task, data_dir, "test", intervals=False)
        manifest = load_manifest(data_dir)
        names = manifest["target_names"]
        theirs = task.preprocessor.with_scalers(
            manifest["scaler"]["features"],
            MinMaxScaler.from_dict(manifest["scaler"]["targets"]).select(names))
        refit, _ = evaluate_model(LabquakeRegressor(task.network, theirs), data_dir, "test",
                                  intervals=False)
    a, b = own["targets"][target], refit["targets"][target]
    return {"rmse": a["rmse"], "r2": a["r2"], "units": a["units"],
            "rmse_target_scaled": b["rmse_scaled"], "r2_target_scaled": b["r2_scaled"],
            "n_labelled": a["n_labelled"]}


def transfer(out, runs, seed, epochs, targets=("p4581", "p5198")):
    """One seed of the transfer matrix (``jobs.transfer_matrix``): its rows. One head
    calibrated on validation: the matrix compares RMSE, and the ensemble with its forward
    twin cost 10 heads a cell."""
    config = TrainConfig(seed=seed, verbose=0, epochs=epochs)
    return {"rows": transfer_matrix(runs, list(targets), out, "shear_stress", config=config,
                                    finetune_options=dict(ensemble=1, calibration="val"))}


def _scores(task, run, target):
    """Test scores of a finished run, with the training-mean baseline and a check that
    every labelled test step was scored."""
    summary = task.metadata["training"]
    m = summary["metrics"]["test"]["targets"][target]
    data = pathlib.Path(run) / DATA_FOLDER
    train, test = split_arrays(data, "train"), split_arrays(data, "test")
    y_train = train["targets"][target][np.asarray(train["label_mask"][target], bool)]
    y_test = test["targets"][target][np.asarray(test["label_mask"][target], bool)]
    keys = ("rmse", "r2", "rmse_scaled", "coverage", "width", "n_labelled", "units",
            "coverage_by_phase")
    return {**{k: m[k] for k in keys if k in m},
            "baseline_rmse": float(np.sqrt(np.mean((y_test - y_train.mean()) ** 2))),
            "n_labelled_test_steps": int(len(y_test)),
            "blocks": summary["blocks"], "seq_len": summary["seq_len"],
            "ensemble": summary["ensemble"], "calibration": summary["calibration"],
            "epochs_run": summary["epochs_run"]}


def _val_loss(run):
    """Member 0's validation loss per epoch, from the run's history (Keras' CSVLogger)."""
    with open(pathlib.Path(run) / HISTORY_FILE, newline="") as f:
        return [float(row["val_loss"]) for row in csv.DictReader(f)]


def _training_events(run, fraction):
    """The training events the run learnt from, of how many, and its calibration."""
    data = pathlib.Path(run) / DATA_FOLDER
    cfg = read_json(pathlib.Path(run) / CONFIG_FILE)["finetune"]
    return {"events": int(len(kept_events(data, fraction))),
            "of": int(len(split_arrays(data, "train")["events"])),
            "calibration": cfg["calibration"]}
