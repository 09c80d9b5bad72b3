"""A small server speaking TensorFlow Serving's REST API, for machines without Docker.

``labquake serve --model-base-path saved_models/NAME --port 8501`` answers

* ``GET  /v1/models/NAME[/versions/N|/labels/L]`` (status),
* ``GET  /v1/models/NAME[/versions/N|/labels/L]/metadata`` (signature defs),
* ``POST /v1/models/NAME[/versions/N|/labels/L]:predict`` (row ``instances`` or
  columnar ``inputs``),

with TF Serving's JSON bodies and status codes (errors are ``{"error": "..."}``, 400 for
bad input, 404 for an unknown model or version). Like TF Serving's default version
policy it serves the newest ``--num-versions`` versions and polls the base path for new
ones. What it does not do: gRPC, ``:classify``/``:regress``, ``b64`` binary inputs,
request batching, several models per process, or a ``models.config`` file.
"""

import json
import logging
import pathlib
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

from labquake_tf.serving.export import DEFAULT_SIGNATURE, versions

log = logging.getLogger(__name__)

_URL = re.compile(r"^/v1/models/(?P<name>[^/:]+)"
                  r"(?:/versions/(?P<version>-?\d+)|/labels/(?P<label>[^/:]+))?"
                  r"(?:(?P<metadata>/metadata)|:(?P<verb>[A-Za-z]+))?/?$")


class ServingError(Exception):
    """An error with the HTTP status TF Serving would answer it with."""

    def __init__(self, http_status, message):
        super().__init__(message)
        self.http_status = http_status


class Signature:
    """One signature of a loaded SavedModel, called with numpy arrays."""

    def __init__(self, fn):
        self.fn = fn
        self.inputs = dict(fn.structured_input_signature[1])
        self.outputs = dict(fn.structured_outputs)

    def __call__(self, arrays):
        import tensorflow as tf

        feeds = {}
        for name, spec in self.inputs.items():
            x = arrays[name]
            if x.ndim != len(spec.shape) or not spec.shape.is_compatible_with(x.shape):
                raise ServingError(400, f"input {name!r} has shape {list(x.shape)}, the "
                                        f"signature expects {_dims(spec.shape)} (-1: any)")
            feeds[name] = tf.constant(x, spec.dtype)
        # np.asarray: a scalar string output comes back from .numpy() as bare bytes.
        return {k: np.asarray(v.numpy()) for k, v in self.fn(**feeds).items()}

    def to_json(self):
        """The ``SignatureDef`` as TF Serving's metadata endpoint writes it."""
        from tensorflow.core.framework import types_pb2

        def tensors(specs, prefix):
            return {name: {"dtype": types_pb2.DataType.Name(spec.dtype.as_datatype_enum),
                           "tensor_shape": {"dim": [{"size": str(d), "name": ""}
                                                    for d in _dims(spec.shape)],
                                            "unknown_rank": False},
                           "name": f"{prefix}{name}:0"} for name, spec in specs.items()}
        return {"inputs": tensors(self.inputs, "serving_default_"),
                "outputs": tensors(self.outputs, "StatefulPartitionedCall:"),
                "method_name": "tensorflow/serving/predict"}


class Servable:
    """One loaded version."""

    def __init__(self, version, path):
        import tensorflow as tf

        self.version = version
        self.path = pathlib.Path(path)
        self._obj = tf.saved_model.load(str(path))  # keeps the variables alive
        self.signatures = {k: Signature(fn) for k, fn in self._obj.signatures.items()}
        meta = self.path / "assets" / "metadata.json"
        self.feature_names = json.loads(meta.read_text()).get("feature_names") \
            if meta.exists() else None


class ModelRegistry:
    """The newest ``num_versions`` versions under ``base_path``, reloaded by ``refresh``."""

    def __init__(self, name, base_path, num_versions=1, labels=None):
        self.name = name
        self.base_path = pathlib.Path(base_path)
        self.num_versions = num_versions
        self.labels = dict(labels or {})
        self._servables = {}
        self._failed = set()

    def refresh(self):
        """Load new versions, unload those that fell out of the policy; returns the versions."""
        wanted = versions(self.base_path)[-self.num_versions:]
        loaded = dict(self._servables)
        for v in wanted:
            if v not in loaded and v not in self._failed:
                try:
                    loaded[v] = Servable(v, self.base_path / str(v))
                    log.info("loaded %s version %d", self.name, v)
                except Exception as e:  # a broken export must not take the server down
                    self._failed.add(v)
                    log.error("could not load %s: %s", self.base_path / str(v), e)
        # Replaced whole, never mutated: request threads read a consistent snapshot.
        self._servables = {v: s for v, s in loaded.items() if v in wanted}
        return sorted(self._servables)

    @property
    def versions(self):
        return sorted(self._servables)

    def get(self, version=None, label=None):
        servables = self._servables
        if label is not None:
            if label not in self.labels:
                raise ServingError(400, f"Unrecognized servable version label: {label}")
            version = self.labels[label]
        if version is None:
            if not servables:
                raise ServingError(404, f"Servable not found for request: Latest({self.name})")
            return servables[max(servables)]
        if version not in servables:
            raise ServingError(404, f"Servable not found for request: "
                                    f"Specific({self.name}, {version})")
        return servables[version]

    def status(self, version=None, label=None):
        if version is None and label is None:
            chosen = sorted(self._servables)
        else:
            chosen = [self.get(version, label).version]
        if not chosen:
            raise ServingError(404, f"Could not find any versions of model {self.name}")
        return {"model_version_status": [
            {"version": str(v), "state": "AVAILABLE",
             "status": {"error_code": "OK", "error_message": ""}} for v in chosen]}

    def metadata(self, version=None, label=None):
        servable = self.get(version, label)
        return {"model_spec": {"name": self.name, "signature_name": "",
                               "version": str(servable.version)},
                "metadata": {"signature_def": {"signature_def": {
                    k: s.to_json() for k, s in servable.signatures.items()}}}}

    def predict(self, body, version=None, label=None):
        servable = self.get(version, label)
        try:
            request = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ServingError(400, f"JSON Parse error: {e}") from None
        if not isinstance(request, dict):
            raise ServingError(400, "JSON Value not an object")
        name = request.get("signature_name") or DEFAULT_SIGNATURE
        if name not in servable.signatures:
            raise ServingError(400, f'Serving signature name: "{name}" not found in signature def')
        signature = servable.signatures[name]
        # Optional: a client that names its features gets them checked against the export's
        # (matched by name, never by count: logvar_ch2 is not logvar_ch1).
        sent = request.get("feature_names")
        if sent is not None and servable.feature_names is not None \
                and list(sent) != list(servable.feature_names):
            raise ServingError(400, f"feature names differ: the model takes "
                                    f"{servable.feature_names}, the request has {list(sent)}")
        if ("instances" in request) == ("inputs" in request):
            raise ServingError(400, "Not both 'inputs' and 'instances' can be set"
                               if "inputs" in request else "Missing 'inputs' or 'instances' key")
        if "instances" in request:
            outputs = signature(_row_inputs(request["instances"], signature.inputs))
            if len(outputs) == 1:
                return {"predictions": next(iter(outputs.values())).tolist()}
            columns = {k: v.tolist() for k, v in outputs.items()}
            return {"predictions": [dict(zip(columns, row)) for row in zip(*columns.values())]}
        outputs = signature(_columnar_inputs(request["inputs"], signature.inputs))
        if len(outputs) == 1:
            return {"outputs": next(iter(outputs.values())).tolist()}
        return {"outputs": {k: v.tolist() for k, v in outputs.items()}}


def _row_inputs(instances, specs):
    if not isinstance(instances, list) or not instances:
        raise ServingError(400, "'instances' must be a non-empty JSON array")
    if isinstance(instances[0], dict):
        missing = [k for k in specs if any(k not in inst for inst in instances)]
        if missing:
            raise ServingError(400, f"instances lack input(s) {missing}")
        return {k: _tensor([inst[k] for inst in instances], k) for k in specs}
    if len(specs) != 1:
        raise ServingError(400, f"the signature has inputs {sorted(specs)}: each instance "
                                "must be an object naming them")
    (k,) = specs
    return {k: _tensor(instances, k)}


def _columnar_inputs(inputs, specs):
    if isinstance(inputs, dict):
        missing = [k for k in specs if k not in inputs]
        if missing:
            raise ServingError(400, f"'inputs' lacks input(s) {missing}")
        return {k: _tensor(inputs[k], k) for k in specs}
    if len(specs) != 1:
        raise ServingError(400, f"the signature has inputs {sorted(specs)}: 'inputs' must "
                                "be an object naming them")
    (k,) = specs
    return {k: _tensor(inputs, k)}


def _tensor(value, name):
    try:
        x = np.asarray(value, np.float32)
    except (TypeError, ValueError):
        raise ServingError(400, f"input {name!r} is not a rectangular array of numbers") from None
    if not np.isfinite(x).all():
        raise ServingError(400, f"input {name!r} contains NaN or Infinity")
    return x


def _text(value):
    # String outputs (the metadata signature's JSON) come back from TF as bytes.
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _dims(shape):
    return [-1 if d is None else int(d) for d in shape]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: a client reuses one connection
    server_version = "labquake-serve"

    def setup(self):
        super().setup()
        # Without this, Nagle's algorithm and delayed ACKs add ~40 ms to small replies.
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_GET(self):
        self._dispatch("GET")

    def do_POST(self):
        self._dispatch("POST")

    def _dispatch(self, method):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            status, reply = 200, self._route(method, body)
        except ServingError as e:
            status, reply = e.http_status, {"error": str(e)}
        except Exception as e:  # a bug or a TF error: report it, keep serving
            log.exception("request failed")
            status, reply = 500, {"error": f"{type(e).__name__}: {e}"}
        data = json.dumps(reply, default=_text).encode()
        head = (f"HTTP/1.1 {status} {self.responses[status][0]}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n")
        self.wfile.write(head.encode() + data)  # one write: see setup()

    def _route(self, method, body):
        m = _URL.match(self.path.split("?", 1)[0])
        if not m:
            raise ServingError(404 if not self.path.startswith("/v1/") else 400,
                               f"Malformed request: {method} {self.path}")
        registry = self.server.registry
        if m["name"] != registry.name:
            raise ServingError(404, f"Servable not found for request: Latest({m['name']})")
        where = dict(version=int(m["version"]) if m["version"] else None, label=m["label"])
        if method == "GET" and not m["verb"]:
            return registry.metadata(**where) if m["metadata"] else registry.status(**where)
        if method == "POST" and m["verb"] == "predict" and not m["metadata"]:
            return registry.predict(body, **where)
        if method == "POST" and m["verb"] in ("classify", "regress"):
            raise ServingError(400, f":{m['verb']} is not served here; use :predict")
        raise ServingError(400, f"Malformed request: {method} {self.path}")

    def log_message(self, fmt, *args):
        log.debug("%s %s", self.address_string(), fmt % args)


class Server:
    """The HTTP server plus a thread that polls for new versions; a context manager."""

    def __init__(self, base_path, name=None, host="127.0.0.1", port=8501, poll_seconds=2.0,
                 num_versions=1, labels=None):
        base_path = pathlib.Path(base_path)
        if not base_path.is_dir():
            raise FileNotFoundError(f"model base path {base_path} is not a directory")
        self.registry = ModelRegistry(name or base_path.name, base_path, num_versions, labels)
        if not self.registry.refresh():
            raise FileNotFoundError(f"no SavedModel version dirs (1/, 2/, ...) in {base_path}")
        self.httpd = ThreadingHTTPServer((host, port), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.registry = self.registry
        self.poll_seconds = poll_seconds
        self._stop = threading.Event()
        self._threads = []

    @property
    def url(self):
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self):
        """Serve from background threads (tests, benchmarks)."""
        self._threads = [threading.Thread(target=self.httpd.serve_forever, daemon=True),
                         threading.Thread(target=self._poll, daemon=True)]
        for t in self._threads:
            t.start()
        return self

    def serve_forever(self):
        """Serve from this thread until interrupted (``labquake serve``)."""
        poller = threading.Thread(target=self._poll, daemon=True)
        poller.start()
        try:
            self.httpd.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            self._stop.set()
            self.httpd.server_close()

    def _poll(self):
        while not self._stop.wait(self.poll_seconds):
            self.registry.refresh()

    def close(self):
        self._stop.set()
        if self._threads:
            self.httpd.shutdown()
        self.httpd.server_close()
        for t in self._threads:
            t.join(timeout=5)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()


def set_tf_threads(n):
    """Run TF's ops on ``n`` threads (0: TF's default); must precede TF's first op.

    One window gains little from intra-op parallelism; on a machine shared with
    other jobs, fewer threads can cut tail latency (measure with bench_serving).
    """
    import tensorflow as tf

    if n > 0:
        tf.config.threading.set_intra_op_parallelism_threads(n)
        tf.config.threading.set_inter_op_parallelism_threads(n)


def add_arguments(parser):
    parser.add_argument("--model-base-path", required=True,
                        help="folder of integer version dirs, e.g. saved_models/NAME")
    parser.add_argument("--model-name", default=None, help="default: the base path's last part")
    parser.add_argument("--port", type=int, default=8501, help="REST port (TF Serving's is 8501)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="interface to bind (0.0.0.0 to serve other machines)")
    parser.add_argument("--num-versions", type=int, default=1,
                        help="serve the newest N versions (TF Serving's 'latest' policy)")
    parser.add_argument("--label", action="append", default=[], metavar="LABEL=VERSION",
                        help="a version label, e.g. stable=1 (repeatable)")
    parser.add_argument("--poll-seconds", type=float, default=2.0,
                        help="how often to look for new versions")
    parser.add_argument("--tf-threads", type=int, default=0,
                        help="TF intra/inter-op threads (0: TF's default, one per core)")


def run(args):
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    set_tf_threads(args.tf_threads)
    labels = {}
    for item in args.label:
        label, _, version = item.partition("=")
        if not version.isdigit():
            raise SystemExit(f"--label {item!r}: expected LABEL=VERSION, e.g. stable=1")
        labels[label] = int(version)
    server = Server(args.model_base_path, args.model_name, args.host, args.port,
                    args.poll_seconds, args.num_versions, labels)
    print(f"serving {server.registry.name} versions {server.registry.versions} "
          f"at {server.url}/v1/models/{server.registry.name}", flush=True)
    server.serve_forever()
    return 0
