"""The same client against a real ``tensorflow_model_server`` (REST and gRPC, warmup
file loaded); skipped when it is not on PATH."""

import shutil
import socket
import subprocess
import time

import numpy as np
import pytest
import tensorflow as tf

from test_serving_export import TARGETS, raw_windows, tiny_task

from labquake_tf.serving import Client, ServingError
from labquake_tf.serving.export import WARMUP_FILE, export_model

BINARY = shutil.which("tensorflow_model_server")
pytestmark = pytest.mark.skipif(BINARY is None, reason="tensorflow_model_server not on PATH")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def tf_serving(tmp_path_factory):
    base = tmp_path_factory.mktemp("saved_models")
    path = export_model(tiny_task(), "tiny", base_dir=base)
    assert (path / WARMUP_FILE).exists()
    port, grpc_port = free_port(), free_port()
    # --enable_model_warmup (TF Serving's default, spelled out): a warmup file TF Serving
    # could not parse or run would fail the version's load and the status check below.
    proc = subprocess.Popen([BINARY, f"--port={grpc_port}", f"--rest_api_port={port}",
                             "--rest_api_num_threads=4", "--model_name=tiny",
                             "--enable_model_warmup=true", f"--model_base_path={base / 'tiny'}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    client = Client(f"http://127.0.0.1:{port}", "tiny", timeout=2, retries=0)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                client.status()
                break
            except (ConnectionError, ServingError):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"tensorflow_model_server did not come up: "
                                       f"{proc.stderr.read()[-2000:]!r}") from None
                time.sleep(0.5)
        yield client, path, f"grpc://127.0.0.1:{grpc_port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_tf_serving_answers_like_the_embedded_server(tf_serving):
    client, path, _ = tf_serving
    status = client.status()["model_version_status"][0]
    assert status["version"] == "1" and status["state"] == "AVAILABLE"
    x = raw_windows()
    fn = tf.saved_model.load(str(path)).signatures["serving_default"]
    expected = fn(ae_features=tf.constant(x))
    for fmt in ("row", "columnar"):
        out = client.predict(x, format=fmt)
        for name in TARGETS:
            np.testing.assert_allclose(out[name], expected[name].numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ServingError) as e:
        Client(client.base_url, "tiny", version=7, retries=0).predict(x)
    assert e.value.status == 404
    with pytest.raises(ServingError) as e:
        client.predict(x[:, :5])
    assert e.value.status == 400


def test_tf_serving_grpc_with_the_same_client(tf_serving):
    _, path, grpc_url = tf_serving
    client = Client(grpc_url, "tiny", timeout=10)
    assert client.status()["model_version_status"][0]["state"] == "AVAILABLE"
    x = raw_windows()
    expected = tf.saved_model.load(str(path)).signatures["serving_default"](
        ae_features=tf.constant(x))
    out = client.predict(x)
    for name in TARGETS:
        np.testing.assert_allclose(out[name], expected[name].numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ServingError) as e:
        Client(grpc_url, "tiny", version=7, retries=0).predict(x)
    assert e.value.code == "NOT_FOUND"
