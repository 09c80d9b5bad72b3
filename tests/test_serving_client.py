"""Client behaviour: against the embedded server over REST and gRPC, and (for what a real
server will not do on demand: 5xx, odd replies) against a scripted REST stand-in."""

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import tensorflow as tf

from test_serving_export import TARGETS, raw_windows, shared_export

from labquake_tf.serving import Client, ServingError
from labquake_tf.serving.server import Server


class Scripted(BaseHTTPRequestHandler):
    """Answers with ``server.script`` entries in turn, then echoes: output = sum of each window."""

    protocol_version = "HTTP/1.1"

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or "{}")
        self.server.requests.append((self.path, body))
        if self.server.script:
            status, reply = self.server.script.pop(0)
            if status is None:  # read the request, then hang up without an answer
                self.close_connection = True
                return
        elif "instances" in body:
            status, reply = 200, {"predictions": [
                {"sum": float(np.sum(w)), "first": float(np.ravel(w)[0])}
                for w in body["instances"]]}
        else:
            x = np.asarray(body["inputs"])
            status, reply = 200, {"outputs": {"sum": x.sum(axis=(1, 2)).tolist(),
                                              "first": x[:, 0, 0].tolist()}}
        data = json.dumps(reply).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST

    def log_message(self, *args):
        pass


@pytest.fixture
def stub():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Scripted)
    httpd.requests, httpd.script = [], []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


def url(httpd):
    return "http://%s:%d" % httpd.server_address[:2]


def test_batching_splits_requests_and_keeps_order(stub):
    x = np.arange(10 * 4 * 2, dtype=np.float32).reshape(10, 4, 2)
    for fmt in ("row", "columnar"):
        stub.requests.clear()
        out = Client(url(stub), "m").predict(x, format=fmt, batch_size=4)
        np.testing.assert_allclose(out["sum"], x.sum(axis=(1, 2)))
        np.testing.assert_allclose(out["first"], x[:, 0, 0])
        assert [p for p, _ in stub.requests] == ["/v1/models/m:predict"] * 3
        key = "instances" if fmt == "row" else "inputs"
        assert [len(b[key]) for _, b in stub.requests] == [4, 4, 2]


def test_predict_series_windows_end_at_each_step(stub):
    series = np.arange(12, dtype=np.float32)[:, None]
    out = Client(url(stub), "m", version=3).predict_series(series, seq_len=5, batch_size=3)
    # Output i is the window ending at step 4 + i: steps i..i+4.
    np.testing.assert_allclose(out["first"], np.arange(8))
    np.testing.assert_allclose(out["sum"], [series[i:i + 5].sum() for i in range(8)])
    assert {p for p, _ in stub.requests} == {"/v1/models/m/versions/3:predict"}
    assert len(stub.requests) == 3
    with pytest.raises(ValueError, match="n_steps >= 5"):
        Client(url(stub), "m").predict_series(series[:4], seq_len=5)


def test_a_single_output_keeps_its_name(stub):
    # TF Serving answers a one-output signature with bare values; the name is in the metadata.
    dim = [{"size": "-1", "name": ""}]
    meta = {"metadata": {"signature_def": {"signature_def": {"serving_default": {
        "inputs": {"ae_features": {"tensor_shape": {"dim": dim * 3}}},
        "outputs": {"shear_stress": {"tensor_shape": {"dim": dim}}}}}}}}
    stub.script = [(200, {"predictions": [1.5, 2.5]}), (200, meta), (200, {"outputs": [3.5]})]
    client = Client(url(stub), "m")
    np.testing.assert_allclose(client.predict(np.zeros((2, 3, 1)))["shear_stress"], [1.5, 2.5])
    out = client.predict(np.zeros((1, 3, 1)), format="columnar")
    assert list(out) == ["shear_stress"] and out["shear_stress"].tolist() == [3.5]
    assert [p for p, _ in stub.requests] == ["/v1/models/m:predict", "/v1/models/m/metadata",
                                             "/v1/models/m:predict"]


def test_error_body_becomes_serving_error_without_retry(stub):
    stub.script = [(400, {"error": "Missing 'inputs' or 'instances' key"})]
    with pytest.raises(ServingError, match="HTTP 400: Missing 'inputs'") as e:
        Client(url(stub), "m", retries=3, backoff=0).predict(np.zeros((1, 2, 1)))
    assert e.value.status == 400 and len(stub.requests) == 1


def test_only_busy_answers_are_retried_and_a_500_comes_back_at_once(stub):
    stub.script = [(503, {"error": "busy"}), (503, {"error": "busy"})]
    out = Client(url(stub), "m", retries=2, backoff=0).predict(np.ones((2, 3, 1)))
    np.testing.assert_allclose(out["sum"], [3, 3])
    assert len(stub.requests) == 3
    stub.requests.clear()
    stub.script = [(503, {"error": "still busy"})] * 2
    with pytest.raises(ServingError, match="still busy") as e:
        Client(url(stub), "m", retries=1, backoff=0).status()
    assert e.value.status == 503 and len(stub.requests) == 2
    stub.requests.clear()
    stub.script = [(500, {"error": "InvalidArgumentError: oops"})]
    with pytest.raises(ServingError, match="HTTP 500: InvalidArgumentError: oops") as e:
        Client(url(stub), "m", retries=3, backoff=0).predict(np.ones((1, 3, 1)))
    assert e.value.status == 500 and len(stub.requests) == 1


def test_a_post_that_reached_the_server_is_not_sent_again(stub):
    stub.script = [(None, None)]  # the server read it, then the connection dropped
    with pytest.raises(ConnectionError, match="after 1 tries"):
        Client(url(stub), "m", retries=3, backoff=0).predict(np.ones((1, 3, 1)))
    assert len(stub.requests) == 1


def test_backoff_grows_with_jitter_and_grpc_retries_unavailable_only():
    from urllib3.exceptions import ConnectTimeoutError

    from labquake_tf.serving.client import grpc_service_config

    retry = Client("http://127.0.0.1:1", "m", retries=3, backoff=0.1)._pool().retries
    waits = []
    for _ in range(3):
        retry = retry.increment("POST", "/", error=ConnectTimeoutError())
        waits.append(retry.get_backoff_time())
    assert 0.1 <= waits[0] <= 0.2 and 0.2 <= waits[1] <= 0.3 and 0.4 <= waits[2] <= 0.5
    assert retry.status_forcelist == {503} and retry.read == 0
    policy = json.loads(grpc_service_config(3, 0.1))["methodConfig"][0]["retryPolicy"]
    assert policy == {"maxAttempts": 4, "initialBackoff": "0.100s", "maxBackoff": "0.800s",
                      "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]}
    assert "retryPolicy" not in json.loads(grpc_service_config(0, 0.1))["methodConfig"][0]


def test_unreachable_server_and_timeouts_are_clear():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ConnectionError, match="after 2 tries"):
        Client(f"http://127.0.0.1:{port}", "m", retries=1, backoff=0).status()
    with socket.socket() as silent:  # accepts, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        client = Client("http://127.0.0.1:%d" % silent.getsockname()[1], "m", timeout=0.2,
                        retries=0)
        with pytest.raises(ConnectionError, match="timed out"):
            client.status()
    with pytest.raises(ValueError, match="base_url"):
        Client("ftp://host", "m")


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    base = shared_export(tmp_path_factory)[1].parent
    fn = tf.saved_model.load(str(base / "1")).signatures["serving_default"]
    with Server(base, port=0, grpc_port=0) as server:
        yield server, fn


@pytest.mark.parametrize("api", ["http", "grpc"])
def test_real_server_predict_series_and_status(embedded, api):
    server, fn = embedded
    client = Client(server.url if api == "http" else server.grpc_url, "tiny")
    assert client.status()["model_version_status"][0]["state"] == "AVAILABLE"
    assert client.signature() == ({"ae_features": [-1, 16, 1]},
                                  {t: [-1] for t in TARGETS})
    series = raw_windows(1, seed=5)[0].repeat(3, axis=0)  # 48 steps: 33 windows
    out = client.predict_series(series, seq_len=16, batch_size=10)
    windows = np.stack([series[i:i + 16] for i in range(33)])
    expected = fn(ae_features=tf.constant(windows))
    for name in TARGETS:
        assert out[name].shape == (33,)
        np.testing.assert_allclose(out[name], expected[name].numpy(), rtol=1e-5, atol=1e-6)
    assert client.model_metadata()["feature_names"] == ["logvar_ch1"]
    scaled = client.predict({"ae_features": windows[:3]}, signature_name="serving_scaled")
    assert set(scaled) == set(TARGETS) and scaled["ttsf"].shape == (3,)


@pytest.mark.parametrize("api", ["http", "grpc"])
def test_real_server_errors_become_serving_errors(embedded, api):
    server, _ = embedded
    url = server.url if api == "http" else server.grpc_url
    with pytest.raises(ServingError, match=r"Specific\(tiny, 9\)") as e:
        Client(url, "tiny", version=9, retries=0).predict(raw_windows(1))
    assert e.value.status == 404
    with pytest.raises(ServingError, match="shape") as e:
        Client(url, "tiny", retries=3, backoff=0).predict(raw_windows(1)[:, :5])
    assert e.value.status == 400
    if api == "grpc":
        assert e.value.code == "INVALID_ARGUMENT"


def test_unreachable_grpc_server_is_a_connection_error():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = Client(f"grpc://127.0.0.1:{port}", "m", timeout=2, retries=1, backoff=0)
    # The retry lands either on a refused connection (UNAVAILABLE after 2 tries) or, when
    # gRPC is reconnecting just then, waits out the deadline: both are "no server".
    with pytest.raises(ConnectionError,
                       match=r"gRPC (UNAVAILABLE.*after 2 tries|DEADLINE_EXCEEDED)"):
        client.status()
