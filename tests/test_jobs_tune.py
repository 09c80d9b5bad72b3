"""Searches on a tiny simulated record: 1-2 block TCNs, 4-step windows, 1 epoch."""

import csv
import json
import os
import socket
import subprocess
import sys

import keras_tuner as kt
import numpy as np
import pytest

from labquake_tf import cli
from labquake_tf.data import prepare
from labquake_tf.models import Preprocessor, build_tcn, decoder_blocks
from labquake_tf.simulate import generate
from labquake_tf.task import LabquakeRegressor
from labquake_tf.training import TrainConfig
from labquake_tf.tuning.hypermodel import FrozenDecoderHyperModel, TCNHyperModel

SPACE = {"blocks": {"choice": [1, 2]}, "filters": {"choice": [4, 8]}, "kernel_size": 3,
         "seq_len": 4, "dropout": 0.0, "batch_size": 256,
         "learning_rate": {"min": 1e-3, "max": 1e-2, "sampling": "log"}}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tuning")
    record = generate(preset="dds", duration=60.0, seed=0, out=str(tmp / "rec.h5"),
                      spinup=20.0, hop=0.05, window=0.1)
    prepare.prepare(record, tmp / "data", seq_len=8)
    return tmp / "data"


@pytest.fixture(scope="module")
def space_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("space") / "space.json"
    path.write_text(json.dumps(SPACE))
    return path


def _tune(data_dir, space_file, project, *extra):
    argv = ["tune", "--data", str(data_dir), "--space", str(space_file),
            "--project-dir", str(project), "--max-epochs", "1", *extra]
    assert cli.main(argv) == 0


def _rows(project):
    with open(project / "trials.csv", newline="") as f:
        return list(csv.DictReader(f))


def _hp(**values):
    hp = kt.HyperParameters()
    hp.values.update(values)
    return hp


def test_hyperparameters_change_the_built_model(data_dir):
    hm = TCNHyperModel(data_dir, space=SPACE, config=TrainConfig(steps_per_epoch=2))
    small = hm.build(_hp(blocks=1, filters=4, learning_rate=1e-3))
    large = hm.build(_hp(blocks=2, filters=8, learning_rate=5e-3))
    assert [len(decoder_blocks(m)) for m in (small, large)] == [1, 2]
    assert [decoder_blocks(m)[0].filters for m in (small, large)] == [4, 8]
    assert small.input_shape == (None, 4, 1) and small.output_shape == (None, 3)
    assert small.count_params() < large.count_params()
    assert float(large.optimizer.learning_rate) == pytest.approx(5e-3)


def test_a_window_longer_than_the_receptive_field_is_a_valid_trial(data_dir):
    hm = TCNHyperModel(data_dir, space={**SPACE, "seq_len": 8}, config=TrainConfig(steps_per_epoch=2))
    model = hm.build(_hp(blocks=1, seq_len=8))  # one block of kernel 3 sees 5 steps
    assert model.input_shape == (None, 8, 1)


def test_bayesian_search_resumes_and_writes_the_summary(data_dir, space_file, tmp_path):
    project = tmp_path / "bayesian"
    args = ("--tuner", "bayesian", "--objective", "val_rmse_phys", "--no-export")
    _tune(data_dir, space_file, project, "--max-trials", "1", *args)
    first = _rows(project)
    checkpoint = next((project / "search" / "trial_0").glob("checkpoint*"))
    stamp = checkpoint.stat().st_mtime_ns
    _tune(data_dir, space_file, project, "--max-trials", "2", *args)
    rows = _rows(project)
    assert [r["trial"] for r in rows] == ["0", "1"] and rows[0] == first[0]
    assert checkpoint.stat().st_mtime_ns == stamp  # trial 0 was not trained again
    assert all(r["status"] == "COMPLETED" and float(r["score"]) > 0 for r in rows)
    assert {r["filters"] for r in rows} <= {"4", "8"} and {r["seq_len"] for r in rows} == {"4"}
    assert len((project / "trials.md").read_text().splitlines()) == 2 + 2
    assert (project / "score_vs_trial.png").stat().st_size > 1000
    trial = json.loads((project / "search" / "trial_1" / "trial.json").read_text())
    assert "val_rmse_phys" in trial["metrics"]["metrics"]


def test_hyperband_exports_the_best_model(data_dir, space_file, tmp_path):
    project = tmp_path / "hb"
    _tune(data_dir, space_file, project, "--tuner", "hyperband", "--max-trials", "2",
          "--max-epochs", "3", "--name", "tuned", "--export-dir", str(tmp_path / "saved"))
    rows = _rows(project)
    assert len(rows) == 2 and all(r["tuner/epochs"] == "1" for r in rows)
    best = min(rows, key=lambda r: float(r["score"]))
    export = tmp_path / "saved" / "tuned" / "1"
    task = LabquakeRegressor.from_preset(export)
    model, manifest = task.network, task.metadata["data"]
    assert len(decoder_blocks(model)) == int(best["blocks"])
    assert manifest["seq_len"] == 4 and model.input_shape == (None, 4, 1)
    assert task.preprocessor.input_len == 4 and task.preprocessor.fitted
    # the tuning record rides in the task's metadata
    for tuning in (task.metadata["tuning"],):
        assert tuning["trial"] == best["trial"]
        assert tuning["score"] == pytest.approx(float(best["score"]))
    x = np.zeros((2, 4, 1), "float32")
    assert model.predict(x, verbose=0).shape == (2, 3)
    out = task.predict(x)
    assert sorted(out) == sorted(task.target_names) and out["ttsf"].shape == (2,)


def test_time_limit_stops_launching_trials(data_dir, space_file, tmp_path, monkeypatch):
    import types

    from labquake_tf.tuning import search

    # A clock of our own: the limit is set at t=0, two trials launch at t=0.4 and 0.9,
    # the third asks at t=1.5, past the 1 s limit, however fast the machine is.
    ticks = iter([0.0, 0.4, 0.9] + [1.5] * 100)
    monkeypatch.setattr(search, "time", types.SimpleNamespace(monotonic=lambda: next(ticks)))
    project = tmp_path / "limited"
    _tune(data_dir, space_file, project, "--tuner", "random", "--max-trials", "5",
          "--time-limit", "1", "--no-export")
    assert [r["status"] for r in _rows(project)] == ["COMPLETED", "COMPLETED"]


def test_head_only_search_keeps_the_pretrained_blocks_frozen(data_dir, tmp_path):
    pretrained = build_tcn(8, filters=4, kernel_size=3, blocks=2, dropout=0.1)
    run = LabquakeRegressor(pretrained, Preprocessor(["logvar_ch1"], ["shear_stress"], seq_len=8))
    hm = FrozenDecoderHyperModel(run, data_dir, blocks=1, space=SPACE,
                                 config=TrainConfig(steps_per_epoch=2))
    assert hm.space["blocks"] == 1 and hm.space["filters"] == 4 and hm.space["dropout"] == 0.1
    hp = _hp(learning_rate=1e-2)
    model = hm.build(hp)
    block = decoder_blocks(model)
    assert len(block) == 1 and not block[0].trainable
    hm.fit(hp, model, epochs=1)
    for new, old in zip(block[0].get_weights(), decoder_blocks(pretrained)[0].get_weights()):
        np.testing.assert_array_equal(new, old)
    with pytest.raises(ValueError, match="blocks must be between 1 and 2"):
        FrozenDecoderHyperModel(run, data_dir, blocks=3, space=SPACE).build(hp)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_chief_and_two_workers_account_for_every_trial_once(data_dir, space_file, tmp_path):
    project = tmp_path / "dist"
    argv = [sys.executable, "-m", "labquake_tf.cli", "tune", "--data", str(data_dir),
            "--space", str(space_file), "--project-dir", str(project), "--tuner", "random",
            "--max-trials", "2", "--max-epochs", "1", "--no-export"]
    env = {**os.environ, "KERASTUNER_ORACLE_IP": "127.0.0.1",
           "KERASTUNER_ORACLE_PORT": str(_free_port()), "TF_CPP_MIN_LOG_LEVEL": "2"}
    procs = {}
    try:
        for tuner_id in ("chief", "tuner0", "tuner1"):
            log = open(tmp_path / f"{tuner_id}.log", "w")
            procs[tuner_id] = subprocess.Popen(argv, env={**env, "KERASTUNER_TUNER_ID": tuner_id},
                                               stdout=log, stderr=subprocess.STDOUT)
        codes = {tuner_id: p.wait(timeout=240) for tuner_id, p in procs.items()}
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
    logs = {t: (tmp_path / f"{t}.log").read_text()[-2000:] for t in procs}
    assert codes == {"chief": 0, "tuner0": 0, "tuner1": 0}, logs
    rows = _rows(project)
    assert sorted(r["trial"] for r in rows) == ["0", "1"]
    assert all(r["status"] == "COMPLETED" for r in rows)
    # only the chief writes the summary; each trial was trained by some worker
    for r in rows:
        assert list((project / "search" / f"trial_{r['trial']}").glob("checkpoint*"))
    assert not (project / "trials.csv.tmp").exists()


def test_streamable_search_reads_the_decoder_history(data_dir):
    import argparse

    from labquake_tf.models import is_streamable
    from labquake_tf.jobs.tune import longest_window

    hm = TCNHyperModel(data_dir, space=SPACE, config=TrainConfig(steps_per_epoch=2),
                       streamable=True)
    hp = _hp(blocks=1, filters=4, learning_rate=1e-3)
    model = hm.build(hp)
    # one block of kernel 3 sees 5 steps: 4 more than the 4-step window, prepared as 8
    assert is_streamable(model) and model.input_shape == (None, 8, 1)
    history = hm.fit(hp, model, epochs=1)
    assert np.isfinite(history.history["loss"][0])
    args = argparse.Namespace(streamable=True, pretrained=None)
    assert longest_window(SPACE, args) == 4 + (1 + 2 * 2 * 3) - 1  # blocks up to 2
