from http.client import HTTPConnection
import argparse
import json
import os
import re
import shutil
import socket
import threading
import time

import numpy as np
import pytest
import tensorflow as tf

from test_serving_export import TARGETS, raw_windows, shared_export

from labquake_tf.serving import Client, ServingError
from labquake_tf.serving import serve
from labquake_tf.serving.config import models_config
from labquake_tf.serving.http_conn import Limits
from labquake_tf.serving.server import Server


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return shared_export(tmp_path_factory)[1].parent


@pytest.fixture(scope="module")
def server(base):
    with Server(base, port=0, grpc_port=0, labels={"stable": 1},
                metrics_path="/monitoring/prometheus/metrics") as s:
        yield s


@pytest.fixture(scope="module")
def expected(base):
    """In-process physical-unit outputs for ``raw_windows()``: what REST must return."""
    fn = tf.saved_model.load(str(base / "1")).signatures["serving_default"]
    return {k: v.numpy() for k, v in fn(ae_features=tf.constant(raw_windows())).items()}


def call(server, method, path, body=None):
    host, port = server.httpd.server_address[:2]
    conn = HTTPConnection(host, port, timeout=30)
    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    conn.request(method, path, body=data)
    response = conn.getresponse()
    reply = json.loads(response.read())
    conn.close()
    return response.status, reply


def test_status_and_metadata_match_tf_serving(server):
    ok = {"model_version_status": [{"version": "1", "state": "AVAILABLE",
                                    "status": {"error_code": "OK", "error_message": ""}}]}
    for path in ("/v1/models/tiny", "/v1/models/tiny/versions/1", "/v1/models/tiny/labels/stable"):
        assert call(server, "GET", path) == (200, ok)
    status, meta = call(server, "GET", "/v1/models/tiny/metadata")
    assert status == 200
    assert meta["model_spec"] == {"name": "tiny", "signature_name": "", "version": "1"}
    defs = meta["metadata"]["signature_def"]["signature_def"]
    assert set(defs) == {"serving_default", "serving_scaled", "metadata"}
    sig = defs["serving_default"]
    assert sig["method_name"] == "tensorflow/serving/predict"
    assert sig["inputs"]["ae_features"]["dtype"] == "DT_FLOAT"
    assert [d["size"] for d in sig["inputs"]["ae_features"]["tensor_shape"]["dim"]] == \
        ["-1", "16", "1"]
    assert set(sig["outputs"]) == set(TARGETS)


def test_row_and_columnar_round_trip(server, expected):
    x = raw_windows()
    status, rows = call(server, "POST", "/v1/models/tiny:predict", {"instances": x.tolist()})
    assert status == 200 and len(rows["predictions"]) == 6
    assert set(rows["predictions"][0]) == set(TARGETS)
    status, cols = call(server, "POST", "/v1/models/tiny/versions/1:predict",
                        {"inputs": {"ae_features": x.tolist()}})
    assert status == 200 and set(cols["outputs"]) == set(TARGETS)
    named = {"instances": [{"ae_features": w} for w in x.tolist()]}
    assert call(server, "POST", "/v1/models/tiny:predict", named)[1] == rows
    for name in TARGETS:
        np.testing.assert_allclose([r[name] for r in rows["predictions"]], expected[name],
                                   rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(cols["outputs"][name], expected[name], rtol=1e-5, atol=1e-6)
    client = Client(server.url, "tiny")
    for fmt in ("row", "columnar"):
        out = client.predict(x, format=fmt, batch_size=4)
        for name in TARGETS:
            np.testing.assert_allclose(out[name], expected[name], rtol=1e-5, atol=1e-6)


def test_scaled_signature_by_name(server, base):
    x = raw_windows(2)
    fn = tf.saved_model.load(str(base / "1")).signatures["serving_scaled"]
    out = Client(server.url, "tiny", version=1).predict(x, signature_name="serving_scaled")
    np.testing.assert_allclose(out["ttsf"], fn(ae_features=tf.constant(x))["ttsf"], rtol=1e-5, atol=1e-6)


GOOD = {"instances": raw_windows(1).tolist()}
BAD = [
    ("POST", "/v1/models/tiny:predict", {"instances": raw_windows(1)[:, :5].tolist()}, 400,
     "shape"),
    ("POST", "/v1/models/tiny:predict", {"signature_name": "serving_default"}, 400,
     "Missing 'inputs' or 'instances' key"),
    ("POST", "/v1/models/tiny:predict", {**GOOD, "inputs": GOOD["instances"]}, 400, "Not both"),
    ("POST", "/v1/models/tiny:predict", json.dumps(
        {"instances": [[[float("nan")]] * 16]}).encode(), 400, "NaN"),
    ("POST", "/v1/models/tiny:predict", {**GOOD, "signature_name": "serve"}, 400,
     'Serving signature name: "serve" not found in signature def'),
    ("POST", "/v1/models/tiny:predict", b"{not json", 400, "JSON Parse error"),
    ("POST", "/v1/models/tiny:predict", {"instances": [[[1.0]] * 16, [[1.0]] * 3]}, 400,
     "rectangular"),
    ("POST", "/v1/models/tiny:predict", {"inputs": {"other": 1}}, 400, "ae_features"),
    ("POST", "/v1/models/nope:predict", GOOD, 404, "Servable not found for request: Latest(nope)"),
    ("POST", "/v1/models/tiny/versions/9:predict", GOOD, 404,
     "Servable not found for request: Specific(tiny, 9)"),
    ("GET", "/v1/models/tiny/versions/9", None, 404, "Specific(tiny, 9)"),
    ("GET", "/v1/models/tiny/labels/canary", None, 400, "label: canary"),
    ("POST", "/v1/models/tiny:classify", GOOD, 400, ":classify"),
    ("GET", "/v1/models/tiny/extra/metadata", None, 400, "Malformed request"),
    ("GET", "/index.html", None, 404, "Malformed request"),
]


@pytest.mark.parametrize("method,path,body,code,message", BAD)
def test_bad_requests_get_error_bodies_and_server_stays_up(server, method, path, body, code,
                                                           message):
    status, reply = call(server, method, path, body)
    assert status == code and list(reply) == ["error"]
    assert message in reply["error"]
    assert call(server, "POST", "/v1/models/tiny:predict", GOOD)[0] == 200


def test_client_surfaces_server_errors(server):
    with pytest.raises(ServingError, match="Specific\\(tiny, 9\\)") as e:
        Client(server.url, "tiny", version=9).predict(raw_windows(1))
    assert e.value.status == 404 and e.value.message.startswith("Servable not found")


def test_new_versions_are_picked_up(base, tmp_path):
    model_dir = tmp_path / "tiny"
    shutil.copytree(base / "1", model_dir / "1")
    with Server(model_dir, port=0, poll_seconds=0.1) as server:
        client = Client(server.url, "tiny")
        assert [s["version"] for s in client.status()["model_version_status"]] == ["1"]
        # Appear atomically, as export_model does it.
        shutil.copytree(base / "1", model_dir / ".incoming")
        os.replace(model_dir / ".incoming", model_dir / "2")
        deadline = time.monotonic() + 30
        while server.registry.versions != [2] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert server.registry.versions == [2]
        assert client.metadata()["model_spec"]["version"] == "2"
        with pytest.raises(ServingError, match="Specific\\(tiny, 1\\)"):
            Client(server.url, "tiny", version=1).status()


def test_server_refuses_an_empty_base_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="no SavedModel version"):
        Server(tmp_path, port=0)


def test_feature_names_are_checked_by_name(server):
    window = raw_windows()[:1].tolist()
    status, reply = call(server, "POST", "/v1/models/tiny:predict",
                         {"instances": window, "feature_names": ["logvar_ch2"]})
    assert status == 400
    assert reply["error"] == ("feature names differ: the model takes ['logvar_ch1'], "
                              "the request has ['logvar_ch2']")
    status, _ = call(server, "POST", "/v1/models/tiny:predict",
                     {"instances": window, "feature_names": ["logvar_ch1"]})
    assert status == 200
    # the export's own metadata (feature names included) is reachable over REST
    status, reply = call(server, "POST", "/v1/models/tiny:predict",
                         {"signature_name": "metadata", "inputs": {}})
    assert status == 200 and json.loads(reply["outputs"])["feature_names"] == ["logvar_ch1"]


def raw(server, data):
    """Bytes in, ``(status, headers, json body)`` out, over a fresh socket."""
    with socket.create_connection(server.httpd.server_address[:2], timeout=30) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    return int(head.split()[1]), head.decode().lower(), json.loads(body)


def post(body, headers=None):
    headers = {"Content-Length": str(len(body)), **(headers or {})}
    lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items() if v is not None)
    head = f"POST /v1/models/tiny:predict HTTP/1.1\r\nHost: x\r\n{lines}\r\n"
    return head.encode("latin-1") + body  # headers are latin-1 on the wire


GOOD_BYTES = json.dumps(GOOD).encode()
BAD_BODIES = [
    (post(b"", {"Content-Length": str(10 ** 9)}), 413, "over the limit"),
    (post(GOOD_BYTES, {"Content-Length": "12abc"}), 400, "bad Content-Length"),
    (post(GOOD_BYTES, {"Content-Length": "-5"}), 400, "bad Content-Length"),
    (post(GOOD_BYTES, {"Content-Length": "\u00b2"}), 400,  # isdigit(), yet not int()
     "bad Content-Length"),
    (post(GOOD_BYTES, {"Content-Length": str(len(GOOD_BYTES) + 10)}), 400,
     "the body ended after"),
    (post(b"5\r\nhello\r\n0\r\n\r\n", {"Content-Length": None, "Transfer-Encoding": "chunked"}),
     400, "JSON Parse error"),  # chunked bodies are read: this one is not JSON
    (post(b'{"instances": ' + b"[" * 5000 + b"]" * 5000 + b"}"), 400, "nesting too deep"),
    (post(b'{"instances": "\xff\xfe"}'), 400, "not UTF-8"),
    (post(b'{"instances": [' + b"9" * 5000 + b"]}"), 400, "JSON Parse error"),
    (b"GARBAGE\r\n\r\n", 400, "Bad request"),
    (post(GOOD_BYTES).replace(b"Host: x\r\n", b"Host: x\r\nContent-Length: 3\r\n"), 400,
     "conflicting Content-Length"),  # two lengths: which one ends the body is not ours to guess
    (b"PUT /v1/models/tiny:predict HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", 501,
     "Unsupported method"),
    (b"GET /v1/models/tiny HTTP/1.1\r\nHost: x\r\n" + b"X-A: b\r\n" * 101 + b"\r\n", 431,
     "Too many headers"),
    (b"GET /v1/models/tiny HTTP/1.1\r\nHost: x\r\nX-A: " + b"b" * 70000 + b"\r\n\r\n", 431,
     "over 65536 bytes"),
]


@pytest.mark.parametrize("data,code,message", BAD_BODIES)
def test_bad_bodies_get_tf_serving_errors_not_500(server, data, code, message):
    status, head, reply = raw(server, data)
    assert status == code and list(reply) == ["error"] and message in reply["error"]
    assert "content-type: application/json" in head
    # A framing error puts the stream out of step: never reused. A bad JSON body does not.
    in_body = message in ("JSON Parse error", "nesting too deep", "not UTF-8")
    assert ("connection: close" in head) != in_body
    assert call(server, "POST", "/v1/models/tiny:predict", GOOD)[0] == 200


def test_keep_alive_http_1_0_and_expect_100_continue_as_http_says(server):
    with socket.create_connection(server.httpd.server_address[:2], timeout=30) as sock:
        # curl sends Expect: 100-continue with bodies over 1 KB and waits a second for it.
        sock.sendall(post(b"", {"Content-Length": str(len(GOOD_BYTES)),
                                "Expect": "100-continue"}))
        assert sock.recv(25) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(GOOD_BYTES + post(GOOD_BYTES))  # and a second request, kept alive
        reply = b""
        while reply.count(b"HTTP/1.1 200 OK") < 2:
            reply += sock.recv(65536)
    # HTTP/1.0 closes after the answer (raw() reads until the server closes).
    status, head, _ = raw(server, post(GOOD_BYTES).replace(b"HTTP/1.1", b"HTTP/1.0"))
    assert status == 200 and "connection: close" in head


def test_256_clients_with_and_without_keep_alive_all_answered_exactly(server):
    # Bounded: 256 threads x 4 requests on loopback (2 kept alive, 2 on new connections),
    # plus 256 gRPC requests; each answer must equal the SavedModel's own, bit for bit.
    fn = tf.saved_model.load(str(server.registry.get().path)).signatures["serving_default"]
    windows = raw_windows(16, seed=3)
    want = fn(ae_features=tf.constant(windows))["ttef"].numpy()
    rest, grpc_client = Client(server.url, "tiny", retries=0), Client(server.grpc_url, "tiny",
                                                                      retries=0)
    grpc_client.signature()
    failures, answered = [], [0] * 256

    def worker(i):
        for j in range(5):
            k = (i + j) % 16
            client = grpc_client if j == 4 else rest
            try:
                out = client.predict(windows[k:k + 1])["ttef"]
                if np.float32(out[0]) != want[k]:
                    failures.append((i, j, "wrong", out[0], want[k]))
                answered[i] += 1
            except Exception as e:  # the point: there are none
                failures.append((i, j, repr(e)))
            if j in (2, 3):  # requests 3 and 4 of each thread: a new connection each
                rest.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(256)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert failures == [] and answered == [5] * 256, failures[:5]
    assert time.monotonic() - t0 < 300


def metric(server, name, **labels):
    text = call_text(server, "/monitoring/prometheus/metrics")
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    m = re.search(rf"^{re.escape(name)}{{{re.escape(want)}}} (\S+)$", text, re.M)
    return float(m[1]) if m else 0.0


def call_text(server, path):
    host, port = server.httpd.server_address[:2]
    conn = HTTPConnection(host, port, timeout=30)
    conn.request("GET", path)
    response = conn.getresponse()
    assert response.status == 200 and response.getheader("Content-Type").startswith("text/plain")
    return response.read().decode()


def test_prometheus_metrics_count_requests(server):
    count = ":tensorflow:serving:request_count"
    latency = ":tensorflow:serving:request_latency_count"
    ok, missing = (metric(server, count, model_name="tiny", status=s)
                   for s in ("OK", "NOT_FOUND"))
    rest_n = metric(server, latency, model_name="tiny", API="Predict", entrypoint="REST")
    grpc_n = metric(server, latency, model_name="tiny", API="Predict", entrypoint="GRPC")
    for _ in range(3):
        call(server, "POST", "/v1/models/tiny:predict", GOOD)
    call(server, "POST", "/v1/models/tiny/versions/9:predict", GOOD)
    Client(server.grpc_url, "tiny").predict(raw_windows(1))
    assert metric(server, count, model_name="tiny", status="OK") == ok + 3 + 2  # + metadata
    assert metric(server, count, model_name="tiny", status="NOT_FOUND") == missing + 1
    assert metric(server, latency, model_name="tiny", API="Predict", entrypoint="REST") == \
        rest_n + 4
    assert metric(server, latency, model_name="tiny", API="Predict", entrypoint="GRPC") == \
        grpc_n + 1
    text = call_text(server, "/monitoring/prometheus/metrics")
    assert "# TYPE :tensorflow:serving:request_latency histogram" in text
    assert re.search(r'request_latency_bucket\{model_name="tiny",API="Predict",'
                     r'entrypoint="REST",le="\+Inf"\} \d+', text)



@pytest.fixture(scope="module")
def batched(base):
    """With batching, REST is served by an event loop (the fixture above: a thread per
    connection); every HTTP rule holds for both."""
    with Server(base, port=0, grpc_port=0, labels={"stable": 1},
                metrics_path="/monitoring/prometheus/metrics",
                batching={"max_batch_size": 64, "batch_timeout_micros": 0,
                          "num_batch_threads": 2}) as s:
        assert s.httpd.loop is not None
        yield s


@pytest.mark.parametrize("data,code,message", BAD_BODIES)
def test_event_loop_front_bad_bodies_get_tf_serving_errors(batched, data, code, message):
    test_bad_bodies_get_tf_serving_errors_not_500(batched, data, code, message)


def test_event_loop_front_keeps_http_rules_counts_and_holds_256_clients(batched):
    test_status_and_metadata_match_tf_serving(batched)
    test_keep_alive_http_1_0_and_expect_100_continue_as_http_says(batched)
    test_prometheus_metrics_count_requests(batched)
    test_256_clients_with_and_without_keep_alive_all_answered_exactly(batched)
    # the metadata signature is not batchable: its model call goes to the front's pool
    status, reply = call(batched, "POST", "/v1/models/tiny:predict",
                         {"signature_name": "metadata", "inputs": {}})
    assert status == 200 and json.loads(reply["outputs"])["feature_names"] == ["logvar_ch1"]

def broken_version(model_dir, version):
    (model_dir / str(version)).mkdir(parents=True)
    (model_dir / str(version) / "saved_model.pb").write_bytes(b"not a SavedModel")


def test_failed_versions_are_named_at_start_and_retried_on_the_next_poll(base, tmp_path):
    model_dir = tmp_path / "tiny"
    broken_version(model_dir, 1)
    broken_version(model_dir, 2)
    with pytest.raises(RuntimeError, match=r"no version .* could be loaded \(version 1: .+; "
                                           r"version 2: .+\)"):
        Server(model_dir, port=0, num_versions=2)
    shutil.rmtree(model_dir / "1")
    shutil.copytree(base / "1", model_dir / "1")
    with Server(model_dir, port=0, poll_seconds=0.1, num_versions=2) as server:
        status = Client(server.url, "tiny").status()["model_version_status"]
        assert [(s["version"], s["state"]) for s in status] == [("1", "AVAILABLE"), ("2", "END")]
        assert status[1]["status"]["error_code"] == "UNKNOWN"
        assert status[1]["status"]["error_message"]
        # Fix version 2 in place (as a re-export would): the next poll loads it.
        shutil.copytree(base / "1", model_dir / ".fixed")
        shutil.rmtree(model_dir / "2")
        os.replace(model_dir / ".fixed", model_dir / "2")
        deadline = time.monotonic() + 30
        while server.registry.versions != [1, 2] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert server.registry.versions == [1, 2] and server.registry.failed == {}


def test_warmup_runs_before_a_version_serves_and_a_bad_one_fails_the_load(base, tmp_path):
    from labquake_tf.serving.export import WARMUP_FILE, read_warmup

    model_dir = tmp_path / "tiny"
    shutil.copytree(base / "1", model_dir / "1")
    with Server(model_dir, port=None) as server:
        assert server.registry.get().warmup_requests == len(read_warmup(base / "1")) > 1
    (model_dir / "1" / WARMUP_FILE).write_bytes(b"\x00" * 40)  # not TFRecord
    with pytest.raises(RuntimeError, match=r"version 1: RuntimeError: warmup request 1 of "
                                           r".*tf_serving_warmup_requests failed"):
        Server(model_dir, port=None)
    with Server(model_dir, port=None, warmup=False) as server:  # --enable_model_warmup=false
        assert server.registry.versions == [1]


def test_cli_takes_tf_servings_flags_and_config_files(base, tmp_path):
    parser = argparse.ArgumentParser()
    serve.add_arguments(parser)
    (tmp_path / "models.config").write_text(models_config(
        [{"name": "first", "base_path": str(base)},
         {"name": "second", "base_path": str(base), "labels": {"stable": 1}}]))
    (tmp_path / "batching.txt").write_text("max_batch_size { value: 8 }\n"
                                           "allowed_batch_sizes: 4\nallowed_batch_sizes: 8\n")
    (tmp_path / "monitoring.txt").write_text(
        'prometheus_config { enable: true, path: "/metrics" }\n')
    args = parser.parse_args([f"--model_config_file={tmp_path / 'models.config'}", "--port=0",
                              "--rest_api_port=0", "--enable_batching=true",
                              f"--batching_parameters_file={tmp_path / 'batching.txt'}",
                              f"--monitoring_config_file={tmp_path / 'monitoring.txt'}",
                              "--rest_api_timeout_in_ms=1500", "--rest_api_num_threads=3",
                              "--max-connections=50", "--max-buffered-body-bytes=99999999",
                              "--max-body-bytes=1000000"])
    with serve.server_from_args(args) as server:
        assert server.httpd.limits == Limits(
            max_body_bytes=1000000, max_buffered_bytes=99999999, timeout_s=1.5,
            max_connections=50, threads=3)
        assert sorted(server.models) == ["first", "second"] and server.grpc_port > 0
        assert f"gRPC at 127.0.0.1:{server.grpc_port}" in server.describe()
        batcher = server.model("second").get()._batchers["serving_default"]
        assert batcher.max_batch_size == 8 and batcher.allowed == [4, 8]
        out = Client(server.grpc_url, "second", version=1).predict(raw_windows(2))
        assert set(out) == set(TARGETS)
        assert Client(server.url, "first").status()["model_version_status"][0]["version"] == "1"
        assert ":tensorflow:serving:request_count" in call_text(server, "/metrics")
    assert parser.parse_args(["--enable_batching"]).enable_batching is True
    assert parser.parse_args(["--enable_model_warmup=false"]).enable_model_warmup is False
    for argv, message in ([["--model_base_path", str(base), "--port", "8501"], "both 8501"],
                          [["--port", "0"], "--model_base_path or --model_config_file"],
                          [["--model_base_path", str(base), "--port", "70000"], "0..65535"],
                          [["--model_base_path", str(base), "--rest_api_timeout_in_ms", "0"],
                           "--rest_api_timeout_in_ms 0: must be positive"],
                          [["--model_base_path", str(base), "--max-buffered-body-bytes", "10"],
                           "less than --max-body-bytes"]):
        with pytest.raises(SystemExit, match=message):
            serve.server_from_args(parser.parse_args(argv))


def test_event_loop_front_closes_idle_keep_alive_connections_only(base):
    request = b"GET /v1/models/tiny HTTP/1.1\r\nHost: x\r\n\r\n"
    with Server(base, port=0, grpc_port=0, batching={"max_batch_size": 8},
                limits=Limits(idle_s=0.4)) as s:
        idle, busy = (socket.create_connection(s.httpd.server_address[:2], timeout=5)
                      for _ in range(2))
        idle.sendall(request)
        assert idle.recv(65536).startswith(b"HTTP/1.1 200 OK")
        for _ in range(8):  # 1.2 s of requests 0.15 s apart: never idle for 0.4 s
            busy.sendall(request)
            assert busy.recv(65536).startswith(b"HTTP/1.1 200 OK")
            time.sleep(0.15)
        assert idle.recv(65536) == b""  # closed by the server while the other was served
        busy.sendall(request)
        assert busy.recv(65536).startswith(b"HTTP/1.1 200 OK")
        assert len(s.httpd.connections) == 1
        idle.close()
        busy.close()
