"""Scores in physical units (MPa, s): predict every labelled window of a prepared split,
invert the target scaler, score each target on its own.

``labquake evaluate`` (``jobs.evaluate``), the pretraining and fine-tuning jobs all
score through ``evaluate_model``.
"""

import pathlib

import numpy as np

from labquake_tf.data.pipeline import load_manifest, split_arrays
from labquake_tf.data.scaling import MinMaxScaler
from labquake_tf.data.windows import cut
from labquake_tf.evaluation import events, figures
from labquake_tf.evaluation import intervals as conformal
from labquake_tf.models.heads import predict_batches, predict_members

EVENT_TARGETS = ("ttsf", "ttef")
NEAR_FAILURE_S = 2.0
"""A step is "near failure" from this many seconds before an event's onset to its end;
the rest of the cycle is "loading". Intervals are scored per phase because their
misses gather near failures, where an average over the cycle hides them."""


def near_failure(time, events_time, before_s=NEAR_FAILURE_S):
    """Bool per ``time``: within ``before_s`` before an event's onset, or during it.
    ``events_time``: ``(n, 2)`` onset and end times."""
    time = np.asarray(time, np.float64)
    near = np.zeros(time.shape, bool)
    for onset, end in np.asarray(events_time, np.float64).reshape(-1, 2):
        near |= (time >= onset - before_s) & (time <= end)
    return near


def coverage_by_phase(y, lower, upper, near):
    """``{"loading": {"coverage", "width", "n"}, "near_failure": {...}}``; a phase
    with no step is left out."""
    out = {}
    for phase, m in (("loading", ~near), ("near_failure", near)):
        if m.any():
            out[phase] = {**conformal.summary(y[m], lower[m], upper[m]), "n": int(m.sum())}
    return out


def regression_metrics(y_true, y_pred):
    """``{"rmse", "mae", "r2"}`` over all elements of two same-shaped arrays
    (one target at a time: mixing units in one score means nothing)."""
    y_true, y_pred = np.asarray(y_true, np.float64), np.asarray(y_pred, np.float64)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true {y_true.shape} and y_pred {y_pred.shape} differ in shape")
    if y_true.size == 0:
        raise ValueError("no values to score")
    if not (np.all(np.isfinite(y_true)) and np.all(np.isfinite(y_pred))):
        raise ValueError("y_true or y_pred has NaN or inf")
    err = (y_pred - y_true).ravel()
    ss_tot = float(np.sum((y_true - y_true.mean()) ** 2))
    return {"rmse": float(np.sqrt(np.mean(err ** 2))), "mae": float(np.mean(np.abs(err))),
            "r2": 1.0 - float(np.sum(err ** 2)) / ss_tot if ss_tot > 0 else float("nan")}


def predict_windows(network, preprocessor, windows, intervals=None, batch_size=512):
    """Raw feature windows ``(n, input_len, n_features)`` -> ``{"pred", "pred_scaled"}``
    ``(n, n_targets)``, physical and scaled, plus ``"lower"``/``"upper"`` with a
    calibrated interval (``intervals``: a task's block): the one path from raw
    windows to physical units, for scores, ``LabquakeRegressor.predict`` and plots."""
    x = preprocessor.scale_features(np.asarray(windows, np.float32))
    if intervals:
        mean, members = predict_members(network, x, batch_size)
    else:
        mean = np.asarray(predict_batches(network, x, batch_size), np.float64)
    names = preprocessor.target_names
    if mean.shape[1] != len(names):
        raise ValueError(f"model predicts {mean.shape[1]} target(s), its preprocessor names {names}")
    out = {"pred": preprocessor.unscale_targets(mean), "pred_scaled": mean}
    if intervals:
        params = [intervals["targets"][n] for n in names]
        out["lower"], out["upper"] = conformal.bounds(
            out["pred"], members.std(axis=0) * preprocessor.target_scale, params)
    return out


def predict(task, data_dir, split, intervals=True):
    """A task's predictions (physical units) at every window end of a prepared split
    where any target is labelled.

    Returns a dict: ``time`` (n,), ``events_time`` (the split's events' onset and end
    times), ``names`` (the targets), ``units``, ``pred``
    and ``pred_scaled`` (n, n_targets), ``true`` and ``true_scaled`` (n, n_targets,
    NaN where that target is not a label) and ``mask`` (n, n_targets) bool: target
    ``i`` is scored on ``mask[:, i]`` only (``target_arrays`` cuts them out).

    Inputs are scaled and outputs inverted with the task's own preprocessor (as it
    was trained and as its export serves, on any dataset); a task without scalers
    (a PyTorch import) is scored with the data's, fitted on its training part. With
    ``intervals`` and a calibrated task also ``lower`` and ``upper`` (n, n_targets).
    """
    manifest = load_manifest(data_dir)
    seq_len = int(task.network.input_shape[1])
    names = manifest["target_names"]
    if list(task.preprocessor.target_names) != list(names):
        raise ValueError(f"{data_dir}: prepared for targets {names}, the model predicts "
                         f"{task.preprocessor.target_names}")
    arrays = split_arrays(data_dir, split)
    preprocessor = task.preprocessor
    if not preprocessor.fitted:
        preprocessor = preprocessor.with_scalers(manifest["scaler"]["features"],
                                                 MinMaxScaler.from_dict(
                                                     manifest["scaler"]["targets"]).select(names))
    # The steps before the split are inputs for the windows ending on its first steps.
    context = arrays["context"][len(arrays["context"]) - min(len(arrays["context"]), seq_len - 1):]
    x = np.concatenate([context, arrays["features"]])
    labelled = np.stack([arrays["label_mask"][n] for n in names], axis=1)
    ends = np.flatnonzero(labelled.any(axis=1))
    ends = ends[ends + len(context) >= seq_len - 1]
    if len(ends) == 0:
        raise ValueError(f"{data_dir}: split {split!r} has no labelled window of {seq_len} steps")
    out = predict_windows(task.network, preprocessor, cut(x, ends + len(context), seq_len),
                          task.intervals if intervals else None)
    mask = labelled[ends]
    truth = np.where(mask, np.stack([arrays["targets"][n][ends] for n in names], axis=1), np.nan)
    time = arrays["time"]
    events_time = time[np.clip(arrays["events"], 0, len(time) - 1)].reshape(-1, 2)
    out.update(time=time[ends], events_time=events_time, names=names, units=manifest["units"],
               true=truth, mask=mask,
               true_scaled=preprocessor.scale_targets(truth).astype(np.float64))
    return out


def target_arrays(p, name):
    """``(time, true, pred, true_scaled, pred_scaled)`` of one target at its labelled steps."""
    i = p["names"].index(name)
    m = p["mask"][:, i]
    return (p["time"][m], p["true"][m, i], p["pred"][m, i], p["true_scaled"][m, i],
            p["pred_scaled"][m, i])


def evaluate_model(task, data_dir, split, plots_dir=None, title="", intervals=True):
    """Metrics of ``task`` on a prepared split, with ``predict``'s arrays; one
    ``{split}_{target}.png`` per target in ``plots_dir`` when it is given.

    Each target is scored on every labelled window of the split, by its own mask
    (``n_labelled`` per target in the result). With ``intervals`` and a calibrated
    task each target also gets the interval's ``coverage`` and mean ``width``.
    """
    p = predict(task, data_dir, split, intervals)
    result = {"split": split, "n_windows": int(len(p["time"])), "targets": {}, "events": {}}
    for name in p["names"]:
        time, true, pred, true_scaled, pred_scaled = target_arrays(p, name)
        scores = regression_metrics(true, pred)
        scaled = regression_metrics(true_scaled, pred_scaled)
        result["targets"][name] = {**scores, **{f"{k}_scaled": v for k, v in scaled.items()},
                                   "n_labelled": int(len(time)),
                                   "units": p["units"].get(name, "")}
        band = None
        if "lower" in p:
            i, m = p["names"].index(name), p["mask"][:, p["names"].index(name)]
            band = (p["lower"][m, i], p["upper"][m, i])
            result["targets"][name].update(
                conformal.summary(true, *band), interval_target=task.intervals["coverage"],
                coverage_by_phase=coverage_by_phase(true, *band,
                                                    near_failure(time, p["events_time"])))
        if name in EVENT_TARGETS:
            result["events"][name] = events.event_scores(time, true, pred)
        if plots_dir is not None:
            figures.plot_prediction_panel(
                pathlib.Path(plots_dir) / f"{split}_{name}.png", time, true, pred, name,
                p["units"].get(name, ""),
                f"{title} {name}: RMSE {scores['rmse']:.3g}, R² {scores['r2']:.3f}".strip(),
                band=band)
    return result, p
