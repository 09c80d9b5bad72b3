"""Scores in physical units (MPa, s).

The window-level prediction lives in ``evaluation.cli`` (``labquake evaluate``);
these are the two calls training jobs need, with the target selection and input
checks they want.
"""

import numpy as np

from labquake_tf.evaluation.cli import predict, regression_scores


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
    return regression_scores(y_true.ravel(), y_pred.ravel())


def predict_split(model, data_dir, split, targets=None):
    """``(time, y_true, y_pred)`` at every labelled window end of a prepared split;
    ``y_*`` are ``(n, n_targets)`` in physical units, columns in ``targets`` order
    (default: all the model predicts)."""
    p = predict(model, data_dir, split)
    names = list(targets or p["names"])
    missing = [t for t in names if t not in p["names"]]
    if missing:
        raise ValueError(f"{data_dir}: target(s) {missing} not predicted; have {p['names']}")
    idx = [p["names"].index(t) for t in names]
    return p["time"], p["true"][:, idx], p["pred"][:, idx]
