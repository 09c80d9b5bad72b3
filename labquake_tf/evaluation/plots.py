"""The two figures a training job leaves: loss curves and prediction vs truth."""

import math

from labquake_tf.evaluation import figures


def plot_history(history, path):
    """Training (and validation) loss per epoch, log scale, from a history dict."""
    if not history.get("loss"):
        raise ValueError("history has no 'loss' values to plot")
    epochs = history.get("epoch") or range(len(history["loss"]))
    curves = {key: history[key] for key in ("loss", "val_loss")
              if key in history and not all(map(math.isnan, history[key]))}
    figures.plot_curves(path, [e + 1 for e in epochs], curves, "epoch", "MSE (scaled units)")


def plot_prediction(time, y_true, y_pred, path, target_name, units):
    """One target over time, prediction against truth, plus a scatter panel."""
    figures.plot_prediction_panel(path, time, y_true, y_pred, target_name, units)
