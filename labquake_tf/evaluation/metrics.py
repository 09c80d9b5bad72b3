"""Scores in physical units (MPa, s): predict every labelled window of a prepared split,
invert the target scaler, score each target on its own.

``labquake evaluate`` (``evaluation.cli``), the pretraining and fine-tuning jobs all
score through ``evaluate_model``.
"""

import pathlib

import numpy as np

from labquake_tf.evaluation import events, figures

EVENT_TARGETS = ("ttsf", "ttef")


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


def predict(model, data_dir, split):
    """Time, truth and prediction (physical units) at every labelled window end."""
    from labquake_tf.data.pipeline import load_manifest, split_arrays
    from labquake_tf.data.scaling import MinMaxScaler

    manifest = load_manifest(data_dir)
    seq_len = int(model.input_shape[1])
    arrays = split_arrays(data_dir, split)
    x = MinMaxScaler.from_dict(manifest["scaler"]["features"]).transform(arrays["features"])
    ends = np.flatnonzero(arrays["label_mask"])
    ends = ends[ends >= seq_len - 1]
    if len(ends) == 0:
        raise ValueError(f"{data_dir}: split {split!r} has no labelled window of {seq_len} steps")
    windows = np.lib.stride_tricks.sliding_window_view(x, seq_len, axis=0)  # (n, f, seq)
    windows = np.ascontiguousarray(windows[ends - seq_len + 1].transpose(0, 2, 1))
    scaled = np.asarray(model.predict(windows, batch_size=512, verbose=0), np.float64)
    scaler = MinMaxScaler.from_dict(manifest["scaler"]["targets"])
    names = manifest["target_names"]
    if scaled.shape[1] != len(names):
        raise ValueError(f"model predicts {scaled.shape[1]} target(s), {data_dir} has {names}")
    truth = np.stack([arrays["targets"][n][ends] for n in names], axis=1)
    return {"time": arrays["time"][ends], "names": names, "units": manifest["units"],
            "true": truth, "pred": scaler.inverse_transform(scaled),
            "true_scaled": scaler.transform(truth), "pred_scaled": scaled}


def evaluate_model(model, data_dir, split, plots_dir=None, title=""):
    """Metrics of ``model`` on a prepared split, with ``predict``'s arrays; one
    ``{split}_{target}.png`` per target in ``plots_dir`` when it is given."""
    p = predict(model, data_dir, split)
    result = {"split": split, "n_windows": int(len(p["time"])), "targets": {}, "events": {}}
    for i, name in enumerate(p["names"]):
        scores = regression_metrics(p["true"][:, i], p["pred"][:, i])
        scaled = regression_metrics(p["true_scaled"][:, i], p["pred_scaled"][:, i])
        result["targets"][name] = {**scores, **{f"{k}_scaled": v for k, v in scaled.items()},
                                   "units": p["units"].get(name, "")}
        if name in EVENT_TARGETS:
            result["events"][name] = events.event_scores(p["time"], p["true"][:, i], p["pred"][:, i])
        if plots_dir is not None:
            figures.plot_prediction_panel(
                pathlib.Path(plots_dir) / f"{split}_{name}.png", p["time"], p["true"][:, i],
                p["pred"][:, i], name, p["units"].get(name, ""),
                f"{title} {name}: RMSE {scores['rmse']:.3g}, R² {scores['r2']:.3f}".strip())
    return result, p
