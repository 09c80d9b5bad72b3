import io
import json
import sys

import h5py
import keras
import numpy as np
import pytest

from labquake_tf.cli import main
from labquake_tf.data.features import log_variance
from labquake_tf.data.registry import load_record
from labquake_tf.data.scaling import MinMaxScaler
from labquake_tf.files import write_json
from labquake_tf.models import build_tcn
from labquake_tf.task import LabquakeRegressor
from labquake_tf.training.artifacts import save_model


def _run_dir(path, streamable=True, dt=0.1, test=(200.0, 230.0)):
    keras.utils.set_random_seed(0)
    model = build_tcn(8, n_features=1, n_targets=1, filters=4, kernel_size=3, blocks=2,
                      dropout=0.0, streamable=streamable)
    manifest = {"dataset": "p4581", "feature_names": ["logvar_ch1"], "target_names": ["ttsf"],
                "units": {"ttsf": "s"}, "dt": dt, "seq_len": int(model.input_shape[1]),
                "scaler": {"features": {"min": [2.5], "max": [4.5], "names": ["logvar_ch1"]},
                           "targets": {"min": [0.0], "max": [10.0], "names": ["ttsf"]}},
                "splits": {"test": {"t_start": test[0], "t_end": test[1]}}}
    path.mkdir()
    save_model(LabquakeRegressor.from_manifest(model, manifest), path / "model.keras")
    write_json(path / "manifest.json", manifest)
    return model, manifest


def _offline(model, manifest, logvar):
    x = MinMaxScaler.from_dict(manifest["scaler"]["features"]).transform(logvar)
    n = model.input_shape[1]
    y = model.predict(np.stack([x[i:i + n] for i in range(len(x) - n + 1)]), verbose=0)
    return MinMaxScaler.from_dict(manifest["scaler"]["targets"]).inverse_transform(y)[:, 0]


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_dds_features_replay_of_a_split_with_alarms(tmp_path, dds_dir, capsys):
    record = load_record("p4581")
    t_start, t_end = float(record.time[200]), float(record.time[500])
    model, manifest = _run_dir(tmp_path / "run", test=(t_start, t_end))
    out = tmp_path / "p.jsonl"
    rc = main(["stream", "--model", str(tmp_path / "run"), "--input", "p4581", "--split", "test",
               "--alarm", "ttsf<4.6", "--out", str(out), "--chunk", "0.7"])
    assert rc == 0
    lines = _lines(out)
    preds = [r for r in lines if "ttsf" in r and "alarm" not in r]
    alarms = [r for r in lines if "alarm" in r]
    inside = (record.time >= t_start - 1e-9) & (record.time <= t_end)
    assert len(preds) == inside.sum()  # every step of the split, warmed up before it
    expected = _offline(model, manifest, record.features[:np.flatnonzero(inside)[-1] + 1])
    np.testing.assert_allclose([r["ttsf"] for r in preds], expected[-len(preds):], atol=1e-4)
    np.testing.assert_allclose([r["time"] for r in preds], record.time[inside])
    # an alarm on every crossing into ttsf < 4.6, none while it stays below
    below = np.array([r["ttsf"] for r in preds]) < 4.6
    crossings = np.flatnonzero(below & ~np.concatenate([[False], below[:-1]]))
    assert [a["time"] for a in alarms] == [preds[i]["time"] for i in crossings]
    assert "real-time factor" in capsys.readouterr().err


def test_raw_hdf5_and_stdin_frames(tmp_path, monkeypatch, capsys):
    model, manifest = _run_dir(tmp_path / "run", dt=0.01)
    rate = 1000.0
    rng = np.random.default_rng(0)
    ae = (rng.normal(size=(6000, 2)) * (30 + 20 * np.sin(np.arange(6000) / 400.0))[:, None]
          ).astype(np.int16)
    expected = _offline(model, manifest, log_variance(ae[:, :1], rate))
    h5 = tmp_path / "rec.h5"
    with h5py.File(h5, "w") as f:
        f.attrs.update(format="labquake-hdf5", version=1, name="rec")
        d = f.create_dataset("ae", data=ae)
        d.attrs.update(sample_rate=rate, t0=0.0)
    out = tmp_path / "raw.csv"
    assert main(["stream", "--model", str(tmp_path / "run"), "--input", str(h5), "--format",
                 "csv", "--out", str(out), "--chunk", "0.037", "--quiet"]) == 0
    table = np.loadtxt(out, delimiter=",", skiprows=1)
    assert out.read_text().splitlines()[0] == "time,ttsf"
    np.testing.assert_allclose(table[:, 1], expected, atol=1e-4)

    def stdin(data):
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BufferedReader(io.BytesIO(data))))

    args = ["stream", "--model", str(tmp_path / "run"), "--input", "-", "--channels", "2",
            "--sample-rate", "1000", "--quiet", "--out", str(tmp_path / "s.jsonl")]
    stdin(ae.tobytes())
    assert main(args) == 0
    np.testing.assert_allclose([r["ttsf"] for r in _lines(tmp_path / "s.jsonl")], expected,
                               atol=1e-4)
    stdin(ae.tobytes()[:-3])  # truncated last frame
    assert main(args) == 1
    assert "stdin ended inside a frame: 1 trailing byte(s) of a 4-byte frame" in capsys.readouterr().err
    buf = io.BytesIO()
    np.save(buf, ae.astype(np.float32))
    stdin(buf.getvalue())  # a .npy stream whose dtype differs from --dtype
    assert main(args) == 1
    assert "header says dtype float32 and 2 channel(s), but --dtype int16" in capsys.readouterr().err
    stdin(np.full(4000, 3e25, np.float32).tobytes())  # e.g. other bytes read as float32
    assert main(args + ["--dtype", "float32", "--channels", "1"]) == 1
    assert "is --dtype float32 (and --channels 1) right?" in capsys.readouterr().err


def test_reference_model_refused_by_the_incremental_engine(tmp_path, capsys):
    _run_dir(tmp_path / "run", streamable=False)
    rc = main(["stream", "--model", str(tmp_path / "run"), "--input", "p4581", "--engine",
               "incremental", "--quiet"])
    assert rc == 1
    assert "not a streamable TCN" in capsys.readouterr().err
    assert main(["stream", "--model", str(tmp_path / "run")]) == 2  # argparse: one line, exit 2
    assert "the following arguments are required: --input" in capsys.readouterr().err
    _run_dir(tmp_path / "fast", dt=0.01)
    assert main(["stream", "--model", str(tmp_path / "fast"), "--input", "p4581"]) == 1
    assert "steps every 0.1 s, but the model was trained on 0.01 s steps" in capsys.readouterr().err


def test_realtime_pacing(tmp_path):
    import time

    _run_dir(tmp_path / "run")
    record = load_record("p4581")
    t0 = float(record.time[0])
    args = ["stream", "--model", str(tmp_path / "run"), "--input", "p4581", "--quiet",
            "--start", str(t0), "--end", str(t0 + 8.0), "--out", str(tmp_path / "o.jsonl")]
    tic = time.perf_counter()
    assert main(args + ["--realtime", "--speed", "10"]) == 0
    assert time.perf_counter() - tic >= 0.75  # 8 s of stream at 10x real time
    assert len(_lines(tmp_path / "o.jsonl")) == 81 - 8 - 2 * 2 * 3 + 1
