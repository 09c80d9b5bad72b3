import numpy as np
import pytest
from PIL import Image

from labquake_tf.evaluation.figures import plot_history, plot_prediction_panel
from labquake_tf.evaluation.metrics import regression_metrics


def test_regression_metrics_by_hand():
    y = np.array([1.0, 2.0, 3.0, 4.0])
    p = np.array([1.5, 2.0, 2.0, 4.0])
    m = regression_metrics(y, p)
    assert m["rmse"] == pytest.approx(np.sqrt((0.25 + 1.0) / 4))
    assert m["mae"] == pytest.approx(1.5 / 4)
    assert m["r2"] == pytest.approx(1 - 1.25 / 5.0)
    assert regression_metrics(y, y) == {"rmse": 0.0, "mae": 0.0, "r2": 1.0}


def test_regression_metrics_refuses_mismatched_or_invalid_input():
    with pytest.raises(ValueError, match="shape"):
        regression_metrics(np.zeros(3), np.zeros((3, 1)))
    with pytest.raises(ValueError, match="NaN"):
        regression_metrics(np.array([1.0, np.nan]), np.zeros(2))
    with pytest.raises(ValueError, match="no values"):
        regression_metrics([], [])


def test_plots_write_pngs(tmp_path):
    plot_history({"epoch": [0, 1, 2], "loss": [1.0, 0.5, 0.2], "val_loss": [1.1, 0.6, 0.4]},
                 tmp_path / "loss.png")
    t = np.linspace(0, 10, 200)
    plot_prediction_panel(tmp_path / "pred.png", t, np.sin(t), np.sin(t) + 0.1, "shear_stress", "MPa")
    for name in ("loss.png", "pred.png"):
        with Image.open(tmp_path / name) as im:
            assert im.format == "PNG" and im.size[0] > 300
    with pytest.raises(ValueError, match="loss"):
        plot_history({"epoch": []}, tmp_path / "empty.png")
