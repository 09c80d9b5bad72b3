import json

import keras
import keras_tuner as kt
import numpy as np
import pytest

from labquake_tf.tuning import results
from labquake_tf.tuning.objective import PhysicalRMSE, objective
from labquake_tf.tuning.space import HYPERPARAMETERS, declare, load_space


def _write(tmp_path, space):
    path = tmp_path / "space.json"
    path.write_text(json.dumps(space))
    return path


def test_defaults_cover_every_hyperparameter_and_overrides_stay_fixed(tmp_path):
    defaults = load_space()
    assert set(defaults) == set(HYPERPARAMETERS)
    space = load_space(_write(tmp_path, {"filters": 32, "blocks": {"min": 2, "max": 6, "step": 2}}))
    assert space["filters"] == 32 and space["kernel_size"] == defaults["kernel_size"]
    hp = kt.HyperParameters()
    assert declare(hp, "filters", space["filters"]) == 32
    assert declare(hp, "blocks", space["blocks"]) == 2
    declared = {h.name: h for h in hp.space}
    assert type(declared["filters"]).__name__ == "Fixed"
    assert list(declared["blocks"].values) == [2, 4, 6]


def test_ranges_become_int_or_float_and_choices_choice():
    hp = kt.HyperParameters()
    declare(hp, "learning_rate", {"min": 1e-4, "max": 1e-2, "sampling": "log"})
    declare(hp, "seq_len", {"min": 16, "max": 64, "step": 16})
    declare(hp, "batch_size", {"choice": [32, 64]})
    declared = {h.name: h for h in hp.space}
    kinds = {name: type(h).__name__ for name, h in declared.items()}
    assert kinds == {"learning_rate": "Float", "seq_len": "Int", "batch_size": "Choice"}
    assert hp.get("learning_rate") == pytest.approx(1e-4)
    assert declared["learning_rate"].sampling == "log"


@pytest.mark.parametrize("space, message", [
    ({"n_layers": 3}, "unknown hyper-parameter 'n_layers'"),
    ({"filters": [16, 32]}, "use {\"choice\""),
    ({"dropout": {"max": 0.5}}, "missing min"),
    ({"blocks": {"min": 5, "max": 2}}, "blocks.min > blocks.max"),
    ({"blocks": {"choice": []}}, "blocks.choice must be a non-empty list"),
])
def test_bad_space_files_are_rejected_by_name(tmp_path, space, message):
    path = _write(tmp_path, space)
    with pytest.raises(ValueError, match="search space .*space.json") as err:
        load_space(path)
    assert message in str(err.value)


def test_unreadable_space_file(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="broken.json: cannot read it as JSON"):
        load_space(path)


def test_physical_rmse_undoes_the_target_scaling():
    rng = np.random.default_rng(0)
    y_true = rng.uniform(size=(50, 2)).astype("float32")
    y_pred = y_true + rng.normal(scale=0.1, size=(50, 2)).astype("float32")
    scale = np.array([2.5, 40.0])  # MPa, s
    metric = PhysicalRMSE(scale)
    metric.update_state(y_true[:20], y_pred[:20])
    metric.update_state(y_true[20:], y_pred[20:])
    per_target = np.sqrt((((y_pred - y_true) * scale) ** 2).mean(axis=0))
    assert float(metric.result()) == pytest.approx(per_target.mean(), rel=1e-5)
    clone = PhysicalRMSE.from_config(metric.get_config())
    assert clone.scale == [2.5, 40.0] and clone.name == "rmse_phys"
    metric.reset_state()
    assert float(metric.result()) == 0.0


def test_physical_rmse_from_manifest_selects_targets():
    manifest = {"scaler": {"targets": {"min": [1.0, 0.0], "max": [3.0, 10.0],
                                       "names": ["shear_stress", "ttsf"]}}}
    assert PhysicalRMSE.from_manifest(manifest, ["ttsf"]).scale == [10.0]


def test_objective_names():
    assert objective("val_rmse_phys").direction == "min"
    with pytest.raises(ValueError, match="objective 'val_mae'"):
        objective("val_mae")


def test_markdown_table_formats_scores_and_blanks():
    rows = [{"trial": "0", "score": 0.123456, "blocks": 4}, {"trial": "1", "score": None}]
    table = results.markdown_table(rows, ["trial", "score", "blocks"])
    assert table.splitlines() == ["| trial | score | blocks |", "|---|---|---|",
                                  "| 0 | 0.1235 | 4 |", "| 1 |  |  |"]


def test_physical_rmse_in_a_compiled_model():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(loss="mse", metrics=[PhysicalRMSE([2.0, 4.0])])
    x = np.ones((8, 3), "float32")
    y = model.predict(x, verbose=0) + np.array([0.5, 0.25], "float32")
    logs = model.evaluate(x, y, return_dict=True, verbose=0)
    assert logs["rmse_phys"] == pytest.approx((0.5 * 2 + 0.25 * 4) / 2, rel=1e-5)
