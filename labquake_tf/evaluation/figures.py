"""Paper-style figures (Wang et al. 2025, Figs. 2, 4, 5) as PNG files."""

import math

import matplotlib

matplotlib.use("Agg")  # files only; no display on training machines
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_prediction_panel(path, time, y_true, y_pred, name, units, title="", band=None):
    """Prediction and truth over time (left) and predicted vs true (right); ``band``
    ``(lower, upper)`` shades the prediction interval."""
    fig, (ax_t, ax_s) = plt.subplots(1, 2, figsize=(11, 3.5), gridspec_kw={"width_ratios": [3, 1]})
    if band is not None:
        ax_t.fill_between(time, band[0], band[1], color="r", alpha=0.2, lw=0, label="interval")
    ax_t.plot(time, y_true, "k-", lw=1, label="truth")
    ax_t.plot(time, y_pred, "r-", lw=0.8, alpha=0.8, label="prediction")
    ax_t.set(xlabel="time (s)", ylabel=f"{name} ({units})", title=title)
    ax_t.legend(loc="upper right", fontsize=8)
    lo, hi = float(np.min([y_true.min(), y_pred.min()])), float(np.max([y_true.max(), y_pred.max()]))
    ax_s.plot(y_true, y_pred, ".", ms=2, alpha=0.5)
    ax_s.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    ax_s.set(xlabel=f"true ({units})", ylabel=f"predicted ({units})", aspect="equal")
    _save(fig, path)


def plot_history(history, path):
    """Training (and validation) loss per epoch, log scale, from a history dict."""
    if not history.get("loss"):
        raise ValueError("history has no 'loss' values to plot")
    epochs = history.get("epoch") or range(len(history["loss"]))
    curves = {key: history[key] for key in ("loss", "val_loss")
              if key in history and not all(map(math.isnan, history[key]))}
    plot_curves(path, [e + 1 for e in epochs], curves, "epoch", "MSE (scaled units)")


def plot_curves(path, x, curves, xlabel, ylabel):
    """Several named curves over a shared x, log-scaled y (loss curves)."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for label, y in curves.items():
        ax.plot(list(x), y, label=label)
    ax.set(xlabel=xlabel, ylabel=ylabel, yscale="log")
    ax.legend()
    _save(fig, path)


def plot_matrix(path, values, rows, cols, title, fmt="{:.3g}"):
    """A heat map with each cell's value written in it (NaN cells left blank)."""
    values = np.asarray(values, float)
    fig, ax = plt.subplots(figsize=(1.6 * len(cols) + 2, 0.8 * len(rows) + 1.5))
    image = ax.imshow(np.ma.masked_invalid(values), cmap="viridis_r")
    ax.set_xticks(range(len(cols)), cols, rotation=30, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    for (i, j), v in np.ndenumerate(values):
        if np.isfinite(v):
            ax.text(j, i, fmt.format(v), ha="center", va="center", color="w", fontsize=8)
    ax.set_title(title)
    fig.colorbar(image, ax=ax)
    _save(fig, path)


def _save(fig, path):
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
