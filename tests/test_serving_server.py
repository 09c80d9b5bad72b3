from http.client import HTTPConnection
import json
import os
import shutil
import threading
import time

import numpy as np
import pytest
import tensorflow as tf

from test_serving_export import TARGETS, raw_windows, shared_export

from labquake_tf.serving import Client, ServingError
from labquake_tf.serving.server import Server


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return shared_export(tmp_path_factory)[1].parent


@pytest.fixture(scope="module")
def server(base):
    with Server(base, port=0, labels={"stable": 1}) as s:
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


def test_concurrent_requests_all_answered_correctly(server, base):
    # 8 threads x 200 requests, each checked against the SavedModel's own answer.
    fn = tf.saved_model.load(str(base / "1")).signatures["serving_default"]
    inputs = [raw_windows(1, seed=s) for s in range(8)]
    want = [fn(ae_features=tf.constant(x))["shear_stress"].numpy() for x in inputs]
    client = Client(server.url, "tiny")
    errors, answered = [], [0] * 8

    def worker(i):
        try:
            for _ in range(200):
                out = client.predict(inputs[i])["shear_stress"]
                np.testing.assert_allclose(out, want[i], rtol=1e-5, atol=1e-6)
                answered[i] += 1
        except Exception as e:  # reported below, with the thread that saw it
            errors.append((i, repr(e)))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == [] and answered == [200] * 8


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
