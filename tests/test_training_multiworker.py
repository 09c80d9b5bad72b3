"""MultiWorkerMirroredStrategy with two local worker processes on 127.0.0.1."""

import json
import os
import socket
import subprocess
import sys

import pytest

WORKER = r"""
import json, sys
import keras, numpy as np, tensorflow as tf
from labquake_tf.training import TrainConfig, get_strategy, train

strategy = get_strategy("auto")  # from TF_CONFIG, before any other TensorFlow op
rng = np.random.default_rng(0)
x = rng.uniform(size=(64, 16, 1)).astype("float32")
y = x[:, -4:, 0].mean(axis=1, keepdims=True)
ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)


def build():  # BatchNorm + conv like the TCN, but seconds to trace on a busy CPU
    inputs = keras.Input((16, 1))
    h = keras.layers.BatchNormalization(axis=1)(inputs)
    h = keras.layers.Conv1D(4, 3, activation="relu")(h)
    return keras.Model(inputs, keras.layers.Dense(1)(keras.layers.Flatten()(h)))


config = TrainConfig(epochs=2, batch_size=16, learning_rate=1e-2, verbose=0)
model, history = train(build, ds, ds, config, sys.argv[1])
print("RESULT " + json.dumps({
    "replicas": strategy.num_replicas_in_sync, "history": history,
    "multiworker": isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)}))
"""


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def test_two_local_workers_train_and_both_finish(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in _free_ports(2)]}
    procs = []
    for index in range(2):
        env = dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2",
                   TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}))
        procs.append(subprocess.Popen([sys.executable, str(script), str(tmp_path / "run")], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=170)[0])
    except subprocess.TimeoutExpired:
        pytest.fail("a worker did not finish within 170 s")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    results = []
    for proc, out in zip(procs, outputs):
        assert proc.returncode == 0, out[-3000:]
        # the RESULT line only: gRPC may log the peer's shutdown after it (stderr is merged)
        results.append(json.loads(out.split("RESULT ", 1)[1].split("\n", 1)[0]))
    for r in results:
        assert r["multiworker"] and r["replicas"] == 2
        assert len(r["history"]["loss"]) == 2
        assert r["history"]["loss"][1] < r["history"]["loss"][0]
    # Synchronous training: both workers saw the same globally reduced losses.
    assert results[0]["history"]["val_loss"] == pytest.approx(results[1]["history"]["val_loss"])
    run = tmp_path / "run"
    assert (run / "model.keras").exists() and (run / "history.csv").exists()
    assert not (run / "backup").exists() and not list(run.glob(".backup-worker*"))
