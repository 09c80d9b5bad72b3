import csv

import numpy as np
import pytest
import tensorflow as tf

from test_serving_export import TARGETS, shared_export

from labquake_tf.cli import main, run_command
from labquake_tf.data.record import Record
from labquake_tf.data.registry import load_record
from labquake_tf.serving import Client
from labquake_tf.jobs.predict import predict_record
from labquake_tf.serving.server import Server


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    path = shared_export(tmp_path_factory)[1]
    with Server(path.parent, port=0) as server:
        yield server, path


def write_record(path, n_steps=300, n_channels=1):
    """A sawtooth stick-slip record in the ``.npz`` layout ``load_record`` reads."""
    t = np.arange(n_steps) * 0.01
    phase = (t % 1.0)[:, None]
    np.savez(path, time=t, logvar=np.log10(1e-3 + phase).repeat(n_channels, 1).astype("f4"),
             shear_stress=1 + 0.5 * phase[:, 0])
    return path


def test_predict_cli_streams_a_record_to_csv_and_plot(served, tmp_path, capsys):
    server, path = served
    record_path = write_record(tmp_path / "rec.npz")
    out = tmp_path / "pred"
    assert main(["predict", "--server", server.url, "--model", "tiny", "--input",
                 str(record_path), "--out", str(out), "--batch-size", "64"]) == 0
    with open(out / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    record = load_record(record_path)
    assert len(rows) == len(record) - 15  # one row per full 16-step window
    assert set(rows[0]) == {"time", *TARGETS, *(f"{t}_true" for t in TARGETS),
                            *(f"{t}_labelled" for t in TARGETS)}
    np.testing.assert_allclose([float(r["time"]) for r in rows], record.time[15:])
    np.testing.assert_allclose([float(r["shear_stress_true"]) for r in rows],
                               record.targets["shear_stress"][15:], rtol=1e-6)
    # The CSV holds what the SavedModel says about each window, in physical units.
    fn = tf.saved_model.load(str(path)).signatures["serving_default"]
    for i in (0, 137, len(rows) - 1):
        window = record.features[i:i + 16][None].astype("float32")
        assert float(rows[i]["ttsf"]) == pytest.approx(
            float(fn(ae_features=window)["ttsf"][0]), rel=1e-5, abs=1e-6)
    assert (out / "predictions.png").stat().st_size > 10_000
    assert "285 windows" in capsys.readouterr().out


def test_predict_without_a_server_runs_the_task_locally_with_the_same_numbers(served, tmp_path,
                                                                            capsys):
    server, path = served
    record_path = write_record(tmp_path / "rec.npz")
    tables = {}
    for where, argv in (("served", ["--server", server.url, "--model", "tiny"]),
                        ("local", ["--model", str(path)])):
        out = tmp_path / where
        assert main(["predict", *argv, "--input", str(record_path), "--out", str(out)]) == 0
        assert "285 windows" in capsys.readouterr().out
        with open(out / "predictions.csv") as f:
            tables[where] = list(csv.DictReader(f))
        assert (out / "predictions.png").stat().st_size > 10_000
    served_rows, local_rows = tables["served"], tables["local"]
    assert len(local_rows) == len(served_rows) == 285 and set(local_rows[0]) == set(served_rows[0])
    for key in ("time", *TARGETS, "shear_stress_true", "ttsf_labelled"):
        np.testing.assert_allclose([float(r[key]) for r in local_rows],
                                   [float(r[key]) for r in served_rows], rtol=1e-5, atol=1e-6)
    # a missing record is named, locally too
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        run_command(["predict", "--model", str(path), "--input", str(tmp_path / "nope.npz")])


def test_mismatched_records_are_named(served, tmp_path):
    server, _ = served
    client = Client(server.url, "tiny")

    def record(n_steps, n_features, first=1):
        return Record("odd", np.arange(n_steps) * 0.01, np.zeros((n_steps, n_features), "f4"),
                      [f"logvar_ch{i + first}" for i in range(n_features)], {},
                      np.ones(n_steps, bool))

    assert client.model_metadata()["feature_names"] == ["logvar_ch1"]
    # matched by name, not count: channel 2 is not what the model was trained on
    with pytest.raises(ValueError, match=r"feature names differ: model 'tiny' takes "
                                         r"\['logvar_ch1'\], record 'odd' has \['logvar_ch2'\]"):
        predict_record(client, record(100, 1, first=2))
    with pytest.raises(ValueError, match="feature names differ"):
        predict_record(client, record(100, 2))
    with pytest.raises(ValueError, match="odd: 2 feature column"):  # an unnamed model: by count
        predict_record(client, record(100, 2), feature_names=[])
    with pytest.raises(ValueError, match="odd: 10 steps, shorter than one 16-step window"):
        predict_record(client, record(10, 1))
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        run_command(["predict", "--server", server.url, "--model", "tiny", "--input",
                     str(tmp_path / "nope.npz")])
