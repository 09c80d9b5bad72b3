"""A server speaking TensorFlow Serving's REST and gRPC APIs, for machines without Docker.

``labquake serve --model_base_path saved_models/NAME --rest_api_port 8501 --port 8500``
(TF Serving's flag names; the dashed forms work too) answers on the REST port

* ``GET  /v1/models/NAME[/versions/N|/labels/L]`` (status),
* ``GET  /v1/models/NAME[/versions/N|/labels/L]/metadata`` (signature defs),
* ``POST /v1/models/NAME[/versions/N|/labels/L]:predict`` (row ``instances`` or
  columnar ``inputs``),
* ``GET  /monitoring/prometheus/metrics`` with ``--monitoring_config_file``,

and on the gRPC port ``PredictionService.Predict``/``GetModelMetadata`` and
``ModelService.GetModelStatus`` (``grpc_api``), with TF Serving's bodies and status codes
(errors are ``{"error": "..."}``: 400 bad input, 404 unknown model or version, 413 body
too large, 503 batch queue full). Like TF Serving it serves each model's versions by
policy (newest ``--num-versions``, or ``--model_config_file``), polls for new ones,
retries a version that failed to load on the next poll, replays
``assets.extra/tf_serving_warmup_requests`` before a version becomes AVAILABLE, and
batches concurrent requests with ``--enable_batching`` (``batching``).

Workers (``_Front``): with batching, one asyncio event loop reads, parses and answers every
REST connection, and a request waits for its batch holding no thread; without, a thread per
connection runs its own model call (TensorFlow releases the GIL while a model runs, so they
overlap). Both: a 1024-deep listen backlog, HTTP/1.1 keep-alive, the standard library only
(measured in ``benchmarks/bench_serving.py``). Not served: ``:classify``/``:regress``, ``b64``
binary inputs, chunked request bodies.
"""

import asyncio
import json
import logging
import pathlib
import re
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus

import numpy as np

from labquake_tf.serving.batching import Batcher, QueueFullError, run_then
from labquake_tf.serving.client import ServingError
from labquake_tf.files import EXPORT_METADATA
from labquake_tf.serving.export import DEFAULT_SIGNATURE, WARMUP_FILE, read_warmup, versions

log = logging.getLogger(__name__)

_URL = re.compile(r"^/v1/models/(?P<name>[^/:]+)"
                  r"(?:/versions/(?P<version>-?\d+)|/labels/(?P<label>[^/:]+))?"
                  r"(?:(?P<metadata>/metadata)|:(?P<verb>[A-Za-z]+))?/?$")


MAX_BODY_BYTES = 64 << 20
_MAX_LINE, _MAX_HEADERS = 65536, 100  # the stdlib's limits (414 / 431 beyond them)
_BACKLOG = 1024
REST_THREADS = 8  # model calls at once of the event loop's unbatched signatures
IDLE_TIMEOUT_S = 60.0  # an idle keep-alive connection is closed after this long


class Signature:
    """One signature of a loaded SavedModel, called with numpy arrays."""

    def __init__(self, fn):
        self.fn = fn
        self.inputs = dict(fn.structured_input_signature[1])
        self.outputs = dict(fn.structured_outputs)
        # Plain Python per input: TensorShape checks cost more than the rest of a request.
        self._expect = {name: (_dims(spec.shape), spec.dtype.as_numpy_dtype)
                        for name, spec in self.inputs.items()}

    def check(self, arrays):
        """``arrays`` as the signature's dtypes, or a 400 naming what does not fit."""
        if arrays.keys() != self._expect.keys():
            raise ServingError(400, f"the signature takes input(s) {sorted(self.inputs)}; "
                                    f"missing {sorted(set(self.inputs) - set(arrays))}, "
                                    f"unknown {sorted(set(arrays) - set(self.inputs))}")
        feeds = {}
        for name, (dims, dtype) in self._expect.items():
            x = arrays[name]
            if x.ndim != len(dims) or any(d not in (-1, n) for d, n in zip(dims, x.shape)):
                raise ServingError(400, f"input {name!r} has shape {list(x.shape)}, the "
                                        f"signature expects {dims} (-1: any)")
            try:
                feeds[name] = np.asarray(x, dtype)
            except (TypeError, ValueError):
                raise ServingError(400, f"input {name!r} is not {np.dtype(dtype).name}") from None
            if feeds[name].dtype.kind == "f" and not np.isfinite(feeds[name]).all():
                raise ServingError(400, f"input {name!r} contains NaN or Infinity")
        return feeds

    @property
    def batchable(self):
        return bool(self.inputs) and all(s.shape.rank and s.shape[0] is None
                                         for s in self.inputs.values())

    def run(self, feeds):
        import tensorflow as tf

        rows = len(next(iter(feeds.values()))) if self.batchable else 0
        if rows == 1:
            # A batch of one takes another matmul kernel (GEMV) whose last bits differ;
            # computed as two rows it matches the same window inside any batch exactly.
            feeds = {k: np.concatenate([v, v]) for k, v in feeds.items()}
        out = self.fn(**{k: tf.constant(v) for k, v in feeds.items()})
        # np.asarray: a scalar string output comes back from .numpy() as bare bytes.
        return {k: np.asarray(v.numpy()[:1] if rows == 1 else v.numpy()) for k, v in out.items()}

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
    """One loaded version: its signatures, their batchers, warmed up before it serves."""

    def __init__(self, version, path, batching=None, warmup=True):
        import tensorflow as tf

        self.version = version
        self.path = pathlib.Path(path)
        self._obj = tf.saved_model.load(str(path))  # keeps the variables alive
        self.signatures = {k: Signature(fn) for k, fn in self._obj.signatures.items()}
        meta = self.path / EXPORT_METADATA
        self.feature_names = json.loads(meta.read_text()).get("feature_names") \
            if meta.exists() else None
        self._batchers = {}
        if batching is not None:
            self._batchers = {k: Batcher(sig.run, name=f"batch-v{version}-{k}", **batching)
                              for k, sig in self.signatures.items() if sig.batchable}
        self.warmup_requests = 0
        if warmup:
            try:
                self._warmup()
            except BaseException:
                self.close()
                raise

    def signature(self, name=None):
        name = name or DEFAULT_SIGNATURE
        if name not in self.signatures:
            raise ServingError(400, f'Serving signature name: "{name}" not found in signature def')
        return self.signatures[name]

    def run(self, arrays, signature_name=None):
        name = signature_name or DEFAULT_SIGNATURE
        feeds = self.signature(name).check(arrays)
        batcher = self._batchers.get(name)
        if batcher is None:
            return self.signatures[name].run(feeds)
        try:
            return batcher(feeds)
        except QueueFullError as e:
            raise ServingError(503, str(e)) from None

    def submit(self, arrays, signature_name, done, pool):
        """``run`` without waiting: ``done(outputs, error)`` is called once, from a batch
        thread, or from ``pool`` (an ``Executor``) for a signature that is not batched."""
        name = signature_name or DEFAULT_SIGNATURE
        feeds = self.signature(name).check(arrays)
        batcher = self._batchers.get(name)
        if batcher is None:
            pool.submit(run_then, self.signatures[name].run, feeds, done)
            return
        try:
            batcher.submit(feeds, done)
        except QueueFullError as e:
            raise ServingError(503, str(e)) from None

    def _warmup(self):
        # As TF Serving: every PredictRequest in assets.extra/ runs once, through the same
        # path (batching included) as a client's would, so the first client is not slow.
        try:
            requests = read_warmup(self.path)
            for request in requests:
                self.run(request["inputs"], request["signature_name"])
                self.warmup_requests += 1
        except Exception as e:  # the version does not load, with a reason that says why
            raise RuntimeError(f"warmup request {self.warmup_requests + 1} of "
                               f"{self.path / WARMUP_FILE} failed: {e}") from e
        # A batcher also runs sizes no record has (any sum of requests, padded to
        # allowed_batch_sizes): each once more, from a record's own windows.
        for name, batcher in self._batchers.items():
            sample = next((r["inputs"] for r in requests
                           if (r["signature_name"] or DEFAULT_SIGNATURE) == name), None)
            if sample is None:
                continue
            feeds = self.signatures[name].check(sample)
            for size in batcher.sizes():
                batcher.run({k: np.resize(v, (size, *v.shape[1:])) for k, v in feeds.items()})

    def close(self):
        for batcher in self._batchers.values():
            batcher.close()


class ModelRegistry:
    """One model's versions under ``base_path`` chosen by ``policy`` (``("latest", [N])``,
    ``("all", [])`` or ``("specific", [V, ...])``), reloaded by ``refresh``."""

    def __init__(self, name, base_path, num_versions=1, labels=None, policy=None, batching=None,
                 warmup=True):
        self.name = name
        self.base_path = pathlib.Path(base_path)
        self.policy = policy or ("latest", [num_versions])
        self.labels = dict(labels or {})
        self.batching, self.warmup = batching, warmup
        self._servables = {}
        self.failed = {}  # version -> why it did not load; retried on every refresh

    def wanted(self):
        present = versions(self.base_path)
        kind, numbers = self.policy
        if kind == "latest":
            return present[-numbers[0]:]
        return present if kind == "all" else [v for v in present if v in numbers]

    def refresh(self):
        """Load new versions, unload those that fell out of the policy; returns the versions."""
        wanted = self.wanted()
        loaded = dict(self._servables)
        for v in wanted:
            if v in loaded:
                continue
            try:
                loaded[v] = Servable(v, self.base_path / str(v), self.batching, self.warmup)
            except Exception as e:  # a broken export must not take the server down
                reason = f"{type(e).__name__}: {e}".strip()
                if self.failed.get(v) != reason:  # once per reason, not on every poll
                    log.error("could not load %s version %d from %s: %s", self.name, v,
                              self.base_path / str(v), reason)
                self.failed[v] = reason
            else:
                self.failed.pop(v, None)
                log.info("loaded %s version %d (%d warmup request(s))", self.name, v,
                         loaded[v].warmup_requests)
        self.failed = {v: r for v, r in self.failed.items() if v in wanted}
        # Replaced whole, never mutated: request threads read a consistent snapshot.
        self._servables = {v: s for v, s in loaded.items() if v in wanted}
        for v, servable in loaded.items():
            if v not in wanted:
                servable.close()
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
            entries = [(v, "AVAILABLE", "OK", "") for v in sorted(self._servables)]
            # TF Serving reports a version that failed to load as END with its error.
            entries += [(v, "END", "UNKNOWN", r) for v, r in sorted(self.failed.items())]
        else:
            entries = [(self.get(version, label).version, "AVAILABLE", "OK", "")]
        if not entries:
            raise ServingError(404, f"Could not find any versions of model {self.name}")
        return {"model_version_status": [
            {"version": str(v), "state": state,
             "status": {"error_code": code, "error_message": message}}
            for v, state, code, message in entries]}

    def metadata(self, version=None, label=None):
        servable = self.get(version, label)
        return {"model_spec": {"name": self.name, "signature_name": "",
                               "version": str(servable.version)},
                "metadata": {"signature_def": {"signature_def": {
                    k: s.to_json() for k, s in servable.signatures.items()}}}}

    def run(self, arrays, signature_name=None, version=None, label=None):
        """``(servable, outputs)`` for ``{input: array}``: the path REST and gRPC share."""
        servable = self.get(version, label)
        return servable, servable.run(arrays, signature_name)

    def predict(self, body, version=None, label=None):
        """A REST ``:predict`` body (bytes) -> ``(servable, signature name, {input: array},
        reply)``, where ``reply(outputs)`` is TF Serving's JSON answer."""
        servable = self.get(version, label)
        request = parse_json(body)
        if not isinstance(request, dict):
            raise ServingError(400, "JSON Value not an object")
        name = request.get("signature_name") or DEFAULT_SIGNATURE
        signature = servable.signature(name)
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
            return servable, name, _row_inputs(request["instances"], signature.inputs), _rows
        return servable, name, _columnar_inputs(request["inputs"], signature.inputs), _columns

    def close(self):
        servables, self._servables = self._servables, {}
        for servable in servables.values():
            servable.close()


def _rows(outputs):
    if len(outputs) == 1:
        return {"predictions": next(iter(outputs.values())).tolist()}
    columns = {k: v.tolist() for k, v in outputs.items()}
    return {"predictions": [dict(zip(columns, row)) for row in zip(*columns.values())]}


def _columns(outputs):
    if len(outputs) == 1:
        return {"outputs": next(iter(outputs.values())).tolist()}
    return {"outputs": {k: v.tolist() for k, v in outputs.items()}}


def parse_json(body):
    """A request body as JSON; anything that is not (bad UTF-8, nesting deeper than the
    parser's recursion limit, a 5000-digit number) is a 400, never a 500."""
    try:
        return json.loads(body.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ServingError(400, f"JSON Parse error: the body is not UTF-8 ({e.reason} at "
                                f"byte {e.start})") from None
    except RecursionError:
        raise ServingError(400, "JSON Parse error: nesting too deep") from None
    except ValueError as e:
        raise ServingError(400, f"JSON Parse error: {e}") from None


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
        return np.asarray(value, np.float32)
    except (TypeError, ValueError, RecursionError):
        raise ServingError(400, f"input {name!r} is not a rectangular array of numbers") from None


def _text(value):
    # String outputs (the metadata signature's JSON) come back from TF as bytes.
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _dims(shape):
    return [-1 if d is None else int(d) for d in shape]


class _Connection(asyncio.Protocol):
    """One client connection: bytes in (``data_received``), answers out through its
    transport. Requests on it are answered in order: the next is parsed only once the one
    before has its answer. Driven by the event loop, or by the connection's own thread."""

    def __init__(self, front):
        self.front, self.transport = front, None
        self.buf, self.head = bytearray(), None  # head: parsed, waiting for its body
        self.busy = self.eof = self.close = self.parsing = False

    def connection_made(self, transport):
        self.transport = transport
        self.front.connections.add(self)
        self.last = time.monotonic()  # of the last bytes in or out, for the idle sweep

    def connection_lost(self, exc):
        self.front.connections.discard(self)
        self.transport = None  # an answer for a client that left is dropped

    def data_received(self, data):
        self.buf += data
        self.last = time.monotonic()
        if not self.busy:
            self._next()
        elif len(self.buf) > _MAX_LINE:  # a client that sends ahead waits for its answers
            self.transport.pause_reading()

    def eof_received(self):
        self.eof = True
        if not self.busy:
            self._next()
        return True  # half-closed: what was asked is still answered

    def _next(self):
        self.parsing = True
        try:
            while self.transport is not None and not self.busy:
                if self.head is None:
                    self.head = self._parse_head()
                    if self.head is None:
                        if self.eof:
                            self.transport.close()
                        return
                if not self.head:  # an error was answered and the connection closes
                    return
                method, path, start, size = self.head
                if len(self.buf) - start < size:
                    if self.eof:
                        self.head = False
                        return self._error(400, f"the body ended after "
                                                f"{len(self.buf) - start} of {size} bytes")
                    return
                body = bytes(self.buf[start:start + size])
                del self.buf[:start + size]
                self.head, self.busy = None, True
                self.front.owner.respond(method, path, body, self.answer, self.front.pool)
        finally:
            self.parsing = False

    def _parse_head(self):
        """``(method, path, body start, body size)``, None until the head is complete, False
        when an error was answered. Keep-alive as HTTP/1.1 has it; ``Expect: 100-continue``
        answered. (The stdlib's email.parser costs ~45 us a request; this splits lines.)"""
        buf, lines, pos = self.buf, [], 0
        while True:
            end = buf.find(b"\n", pos)
            if (end < 0 and len(buf) - pos > _MAX_LINE) or end + 1 - pos > _MAX_LINE:
                return self._error(414) if not lines else self._error(431, "Line too long")
            if end < 0:
                return None
            line, pos = bytes(buf[pos:end + 1]), end + 1
            if lines and line in (b"\r\n", b"\n"):
                break
            lines.append(line)
            if len(lines) > _MAX_HEADERS + 1:
                return self._error(431, "Too many headers")
        requestline = str(lines[0], "iso-8859-1").rstrip("\r\n")
        words = requestline.split()
        if len(words) != 3 or words[2] not in ("HTTP/1.0", "HTTP/1.1"):
            return self._error(400, f"Bad request syntax ({requestline!r})")
        method, path, version = words
        headers = {}
        for raw in lines[1:]:
            name, colon, value = str(raw, "iso-8859-1").partition(":")
            if not colon:
                return self._error(400, f"Bad header line {raw[:40]!r}")
            name, value = name.strip().lower(), value.strip()
            # A repeated Content-Length (two bodies' worth of doubt) no longer parses.
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        connection = headers.get("connection", "").lower()
        self.close = connection == "close" or (version == "HTTP/1.0" and connection != "keep-alive")
        if method not in ("GET", "POST"):
            return self._error(501, f"Unsupported method ({method!r})")
        # The body by Content-Length; any doubt about where it ends closes the connection
        # after the answer, so a keep-alive stream never goes out of step.
        if headers.get("transfer-encoding"):
            return self._error(400, "Transfer-Encoding is not supported; send Content-Length")
        text = headers.get("content-length", "0")
        if not re.fullmatch(r"\s*[0-9]+\s*", text):
            return self._error(400, f"bad Content-Length header {text[:40]!r}")
        size, limit = int(text), self.front.owner.max_body_bytes
        if size > limit:
            return self._error(413, f"request body of {size} bytes is over the limit of "
                                    f"{limit} bytes")
        if headers.get("expect", "").lower() == "100-continue" and version == "HTTP/1.1" \
                and len(buf) - pos < size:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # curl waits 1 s without
        return method, path, pos, size

    def _error(self, status, message=None):
        self.close = True
        self.answer(status, json.dumps({"error": message or HTTPStatus(status).phrase}).encode())
        return False

    def answer(self, status, data, content_type="application/json"):
        """Send one answer; from a batch or pool thread, through the event loop."""
        if self.front.loop is not None and threading.get_ident() != self.front.thread_id:
            try:
                return self.front.loop.call_soon_threadsafe(self.answer, status, data,
                                                            content_type)
            except RuntimeError:  # the server is closing
                return
        if self.transport is None:
            return
        closing = "Connection: close\r\n" if self.close else ""
        head = (f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\nContent-Type: "
                f"{content_type}\r\nContent-Length: {len(data)}\r\n{closing}\r\n")
        self.transport.write(head.encode() + data)  # one write: one packet for a small answer
        self.last = time.monotonic()
        if self.close:
            self.busy = True
            self.transport.close()
            return
        self.busy = False
        self.transport.resume_reading()
        if not self.parsing:
            self._next()


class _SocketTransport:
    """The transport of a connection served by its own thread (blocking writes)."""

    def __init__(self, sock):
        self.sock, self.closed = sock, False

    def write(self, data):
        self.sock.sendall(data)

    def close(self):
        self.closed = True

    def pause_reading(self):
        pass

    resume_reading = abort = pause_reading


class _Inline:
    """An executor that runs the call in the calling (the connection's) thread."""

    @staticmethod
    def submit(fn, *args):
        fn(*args)


class _Front:
    """The REST port, in one of two ways, both parsing with ``_Connection`` and answering
    with ``Server.respond``:

    * batching (``event_loop``): one asyncio loop thread reads, parses and answers every
      connection, and a request waits for its batch holding no thread. With a thread per
      connection, 64 clients cost ~0.2 ms of CPU a request in thread switches and the GIL
      handed round, which bounded batched throughput (bench_serving: 4x unbatched, was 2.7x);
    * without: a thread per connection that also runs its model call (TF releases the GIL
      while a model runs, so they overlap), with no hand-off between threads: a loop plus a
      pool costs two hand-offs a request, measured slower unbatched.
    """

    def __init__(self, owner, host, port, event_loop, pool_threads=REST_THREADS):
        self.owner, self.connections, self.thread_id = owner, set(), None
        # The stdlib's backlog of 5 reset connections at 64 concurrent clients.
        self.sock = socket.create_server((host, port), backlog=_BACKLOG)
        self.server_address = self.sock.getsockname()
        self._stopping = threading.Event()
        self.loop, self.pool = None, _Inline()
        if event_loop:
            # Model calls that are not batched (e.g. the metadata signature).
            self.pool = ThreadPoolExecutor(max_workers=pool_threads, thread_name_prefix="rest")
            self.loop = asyncio.new_event_loop()
            self.aserver = self.loop.run_until_complete(self.loop.create_server(
                lambda: _Connection(self), sock=self.sock, backlog=_BACKLOG,
                start_serving=False))

    def serve(self):
        """Serve from this thread until ``stop``."""
        self.thread_id = threading.get_ident()
        if self.loop is None:
            return self._accept()
        asyncio.set_event_loop(self.loop)
        self.loop.create_task(self.aserver.start_serving())
        self.loop.call_soon(self._sweep)
        try:
            self.loop.run_forever()
        finally:
            self.aserver.close()
            for connection in list(self.connections):
                connection.transport.abort()
            self.loop.run_until_complete(asyncio.sleep(0))
            self.loop.close()

    def _sweep(self):
        """Close the event loop's idle keep-alive connections (the thread front's recv times
        out instead): idle clients must not hold file descriptors forever."""
        cutoff = time.monotonic() - IDLE_TIMEOUT_S
        for connection in list(self.connections):
            if not connection.busy and connection.last < cutoff and connection.transport:
                connection.transport.close()
        self.loop.call_later(min(IDLE_TIMEOUT_S / 4, 5.0), self._sweep)

    def _accept(self):
        self.sock.settimeout(0.5)  # how soon stop() is noticed
        while not self._stopping.is_set():
            try:
                sock, _ = self.sock.accept()
            except socket.timeout:  # TimeoutError from 3.10; a plain OSError subclass on 3.9
                continue
            except OSError:
                return
            threading.Thread(target=self._serve_socket, args=(sock,), daemon=True).start()

    def _serve_socket(self, sock):
        # Without TCP_NODELAY, Nagle's algorithm and delayed ACKs add ~40 ms to small replies.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(IDLE_TIMEOUT_S)  # an idle keep-alive connection gives its thread back
        connection, transport = _Connection(self), _SocketTransport(sock)
        connection.connection_made(transport)
        try:
            while not transport.closed:
                data = sock.recv(1 << 16)
                if not data:
                    connection.eof_received()
                    break
                connection.data_received(data)
        except OSError:  # reset, or idle too long
            pass
        finally:
            connection.connection_lost(None)
            try:
                sock.shutdown(socket.SHUT_WR)  # the answer goes out before the close
            except OSError:
                pass
            sock.close()

    def stop(self):
        self._stopping.set()
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self.loop.stop)

    def close(self):
        if self.loop is not None:
            if not self.loop.is_closed() and self.thread_id is None:
                self.aserver.close()
                self.loop.close()
            self.pool.shutdown(wait=False)
        self.sock.close()


class Server:
    """REST and gRPC front ends, the models, and a thread that polls for new versions;
    a context manager.

    ``port`` is the REST port and ``grpc_port`` the gRPC one: 0 picks a free port (see
    ``url``/``grpc_url``), None serves no such API. One model from ``base_path`` (and
    ``name``, ``num_versions``, ``labels``), or several from ``models`` (dicts as
    ``config.read_model_config`` returns them). ``batching``: a dict of TF Serving's
    batching parameters (``config.read_batching_parameters``), None for no batching.
    ``metrics_path``: where Prometheus metrics are served on the REST port.
    """

    def __init__(self, base_path=None, name=None, host="127.0.0.1", port=8501, poll_seconds=2.0,
                 num_versions=1, labels=None, *, grpc_port=None, models=None, batching=None,
                 metrics_path=None, max_body_bytes=MAX_BODY_BYTES, warmup=True, grpc_threads=64):
        if models is None:
            if base_path is None:
                raise ValueError("give a model base path or a model config")
            base_path = pathlib.Path(base_path)
            models = [{"name": name or base_path.name, "base_path": base_path,
                       "policy": ("latest", [num_versions]), "labels": labels or {}}]
        self.models = {}
        for m in models:
            if not pathlib.Path(m["base_path"]).is_dir():
                raise FileNotFoundError(f"model {m['name']!r}: base path {m['base_path']} is "
                                        "not a directory")
            self.models[m["name"]] = ModelRegistry(
                m["name"], m["base_path"], labels=m.get("labels"), policy=m.get("policy"),
                batching=batching, warmup=warmup)
        self.max_body_bytes = max_body_bytes
        self.metrics_path = metrics_path
        from labquake_tf.serving.metrics import Metrics

        self.metrics = Metrics()
        self.httpd = self.grpc = None
        self.grpc_port = None
        self.host = host
        self.poll_seconds = poll_seconds
        self._stop = threading.Event()
        self._threads = []
        try:
            # The ports first: a busy one fails before the models load. Nothing is answered
            # until every version is loaded and warmed up, so the last thing before the first
            # request is the warmup, not the gRPC start-up: TF's threads go cold within a few
            # idle ms (bench_serving measures a request after 50 ms idle).
            if port is not None:
                self.httpd = _Front(self, host, port, event_loop=batching is not None)
            if grpc_port is not None:
                self._bind_grpc(host, grpc_port, grpc_threads)
            for registry in self.models.values():
                if not registry.refresh():
                    raise _nothing_loaded(registry)
            if self.grpc is not None:
                self.grpc.start()
        except BaseException:
            self.close()
            raise

    def _bind_grpc(self, host, port, threads):
        from concurrent import futures

        import grpc

        from labquake_tf.serving.grpc_api import add_services

        self.grpc = grpc.server(
            futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="grpc"),
            options=[("grpc.max_receive_message_length", self.max_body_bytes),
                     ("grpc.max_send_message_length", -1),
                     ("grpc.so_reuseport", 0)])  # a busy port is an error, not shared
        add_services(self.grpc, self)
        try:
            self.grpc_port = self.grpc.add_insecure_port(f"{host}:{port}")
        except RuntimeError:
            self.grpc_port = 0
        if not self.grpc_port:
            raise OSError(f"could not bind the gRPC port {host}:{port} (in use?)")

    @property
    def registry(self):
        """The first (with ``base_path``: the only) model."""
        return next(iter(self.models.values()))

    def model(self, name):
        if name not in self.models:
            raise ServingError(404, f"Servable not found for request: Latest({name})")
        return self.models[name]

    def observe(self, model, api, entrypoint, fn):
        """``fn()``, counted and timed in the metrics under TF Serving's labels."""
        t0, code = time.perf_counter(), "OK"
        try:
            return fn()
        except ServingError as e:
            code = e.code
            raise
        except Exception:
            code = "INTERNAL"
            raise
        finally:
            self.metrics.observe(model, api, entrypoint, code, time.perf_counter() - t0)

    def respond(self, method, path, body, reply, pool):
        """One REST request -> ``reply(status, data, content_type)``, called once: now, or
        from a batch or ``pool`` thread once the model call it waits for is done."""
        clean = path.split("?", 1)[0]
        if method == "GET" and self.metrics_path and clean == self.metrics_path:
            return reply(200, self.metrics.render().encode(), "text/plain; version=0.0.4")
        m, t0 = _URL.match(clean), time.perf_counter()

        def answer(status, payload, code="OK"):
            if m:
                api = "GetModelMetadata" if m["metadata"] else \
                    "Predict" if m["verb"] else "GetModelStatus"
                self.metrics.observe(m["name"], api, "REST", code, time.perf_counter() - t0)
            reply(status, json.dumps(payload, default=_text).encode())

        def fail(e):
            if isinstance(e, ServingError):
                return answer(e.http_status, {"error": str(e)}, e.code)
            # A bug or a TF error: report it, keep serving.
            log.error("request failed", exc_info=(type(e), e, e.__traceback__))
            answer(500, {"error": f"{type(e).__name__}: {e}"}, "INTERNAL")

        def done(outputs, error):
            try:
                if error is not None:
                    raise error
                payload = format_reply(outputs)
            except Exception as e:
                return fail(e)
            answer(200, payload)

        try:
            result = self._route(method, path, m, body)
            if isinstance(result, dict):
                return answer(200, result)
            servable, name, arrays, format_reply = result
            servable.submit(arrays, name, done, pool)
        except Exception as e:
            fail(e)

    def _route(self, method, path, m, body):
        """A status or metadata answer, or ``registry.predict``'s request to run."""
        if not m:
            raise ServingError(404 if not path.startswith("/v1/") else 400,
                               f"Malformed request: {method} {path}")
        registry = self.model(m["name"])
        where = dict(version=int(m["version"]) if m["version"] else None, label=m["label"])
        if method == "GET" and not m["verb"]:
            return registry.metadata(**where) if m["metadata"] else registry.status(**where)
        if method == "POST" and m["verb"] == "predict" and not m["metadata"]:
            return registry.predict(body, **where)
        if method == "POST" and m["verb"] in ("classify", "regress"):
            raise ServingError(400, f":{m['verb']} is not served here; use :predict")
        raise ServingError(400, f"Malformed request: {method} {path}")

    @property
    def url(self):
        """The REST base URL (None without REST)."""
        if self.httpd is None:
            return None
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def grpc_url(self):
        return f"grpc://{self.host}:{self.grpc_port}" if self.grpc_port else None

    def describe(self):
        """The start-up line: what is served where (the chosen ports when 0 was asked)."""
        models = ", ".join(f"{r.name} versions {r.versions}" for r in self.models.values())
        where = [f"REST at {self.url}/v1/models/NAME"] if self.httpd else []
        where += [f"gRPC at {self.host}:{self.grpc_port}"] if self.grpc_port else []
        if self.metrics_path and self.httpd:
            where.append(f"metrics at {self.url}{self.metrics_path}")
        return f"serving {models}; " + ", ".join(where)

    def start(self):
        """Serve from background threads (tests, benchmarks)."""
        self._threads = [threading.Thread(target=self._poll, daemon=True)]
        if self.httpd is not None:
            self._threads.append(threading.Thread(target=self.httpd.serve, daemon=True))
        for t in self._threads:
            t.start()
        return self

    def serve_forever(self):
        """Serve from this thread until interrupted (``labquake serve``)."""
        if not self._threads_started():
            self.start()
        try:
            while any(t.is_alive() for t in self._threads):
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
        finally:
            self.close()

    def _poll(self):
        while not self._stop.wait(self.poll_seconds):
            for registry in self.models.values():
                registry.refresh()

    def close(self):
        if getattr(self, "_stop", None) is not None:
            self._stop.set()
        if self.httpd is not None:
            if self._threads_started():
                self.httpd.stop()
        if self.grpc is not None:
            self.grpc.stop(grace=1).wait(5)
        for t in getattr(self, "_threads", []):
            t.join(timeout=5)
        if self.httpd is not None:
            self.httpd.close()
        self._close_models()

    def _threads_started(self):
        return any(t.ident for t in getattr(self, "_threads", []))

    def _close_models(self):
        for registry in self.models.values():
            registry.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()


def _nothing_loaded(registry):
    if registry.failed:
        why = "; ".join(f"version {v}: {r}" for v, r in sorted(registry.failed.items()))
        return RuntimeError(f"model {registry.name!r}: no version of {registry.base_path} "
                            f"could be loaded ({why})")
    return FileNotFoundError(f"model {registry.name!r}: no SavedModel version dirs "
                             f"(1/, 2/, ...) in {registry.base_path}")


def set_tf_threads(n):
    """Run TF's ops on ``n`` threads (0: TF's default); must precede TF's first op.

    One window gains little from intra-op parallelism; on a machine shared with
    other jobs, fewer threads can cut tail latency (measure with bench_serving).
    """
    import tensorflow as tf

    if n > 0:
        tf.config.threading.set_intra_op_parallelism_threads(n)
        tf.config.threading.set_inter_op_parallelism_threads(n)


def boolean(text):
    """TF Serving's boolean flag values (argparse names the function in its error)."""
    if text.lower() in ("1", "true", "yes"):
        return True
    if text.lower() in ("0", "false", "no"):
        return False
    raise ValueError(text)


def add_arguments(parser):
    # TF Serving's flag names (scripts for tensorflow_model_server run unchanged) and
    # this project's dashed ones are the same options.
    parser.add_argument("--model_base_path", "--model-base-path", dest="model_base_path",
                        help="folder of integer version dirs, e.g. saved_models/NAME")
    parser.add_argument("--model_name", "--model-name", dest="model_name", default=None,
                        help="default: the base path's last part")
    parser.add_argument("--model_config_file", "--model-config-file", dest="model_config_file",
                        default=None, help="a models.config (ModelServerConfig text format) "
                                           "naming several models; replaces --model_base_path")
    parser.add_argument("--port", type=int, default=8500,
                        help="gRPC port, as TF Serving's (default 8500; 0: a free port; "
                             "-1: no gRPC)")
    parser.add_argument("--rest_api_port", "--rest-api-port", dest="rest_api_port", type=int,
                        default=8501, help="REST port (default 8501; 0: a free port; -1: no REST)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="interface to bind (0.0.0.0 to serve other machines)")
    parser.add_argument("--num-versions", type=int, default=1,
                        help="serve the newest N versions (TF Serving's 'latest' policy)")
    parser.add_argument("--label", action="append", default=[], metavar="LABEL=VERSION",
                        help="a version label, e.g. stable=1 (repeatable)")
    parser.add_argument("--poll-seconds", "--file_system_poll_wait_seconds", dest="poll_seconds",
                        type=float, default=2.0, help="how often to look for new versions")
    parser.add_argument("--enable_batching", "--enable-batching", dest="enable_batching",
                        nargs="?", const=True, default=False, type=boolean,
                        help="merge concurrent requests into one model call "
                             "(--enable_batching or --enable_batching=true)")
    parser.add_argument("--batching_parameters_file", "--batching-parameters-file",
                        dest="batching_parameters_file", default=None,
                        help="TF Serving's BatchingParameters text format (max_batch_size, "
                             "batch_timeout_micros, num_batch_threads, max_enqueued_batches, "
                             "allowed_batch_sizes); implies --enable_batching")
    parser.add_argument("--monitoring_config_file", "--monitoring-config-file",
                        dest="monitoring_config_file", default=None,
                        help='e.g. prometheus_config { enable: true, path: '
                             '"/monitoring/prometheus/metrics" }')
    parser.add_argument("--enable_model_warmup", "--enable-model-warmup",
                        dest="enable_model_warmup", nargs="?", const=True, type=boolean,
                        default=True, help="replay assets.extra/tf_serving_warmup_requests "
                                           "before serving a version (default true)")
    parser.add_argument("--max-body-bytes", type=int, default=MAX_BODY_BYTES,
                        help="larger REST bodies / gRPC messages are refused (413)")
    parser.add_argument("--grpc-threads", type=int, default=64,
                        help="gRPC worker threads (requests beyond this wait in line)")
    parser.add_argument("--tf-threads", type=int, default=0,
                        help="TF intra/inter-op threads (0: TF's default, one per core)")


def server_from_args(args):
    """A ``Server`` (not started) for ``labquake serve``'s arguments."""
    from labquake_tf.serving import config

    if (args.model_base_path is None) == (args.model_config_file is None):
        raise SystemExit("give --model_base_path or --model_config_file (one of them)")
    labels = {}
    for item in args.label:
        label, _, version = item.partition("=")
        if not version.isdigit():
            raise SystemExit(f"--label {item!r}: expected LABEL=VERSION, e.g. stable=1")
        labels[label] = int(version)
    models = None
    if args.model_config_file:
        if args.label or args.model_name:
            raise SystemExit("--label/--model_name go in the --model_config_file")
        models = config.read_model_config(args.model_config_file)
    batching = None
    if args.enable_batching or args.batching_parameters_file:
        batching = config.read_batching_parameters(args.batching_parameters_file) \
            if args.batching_parameters_file else config.DEFAULT_BATCHING
    metrics_path = config.read_monitoring_config(args.monitoring_config_file) \
        if args.monitoring_config_file else None
    for flag, port in (("--port", args.port), ("--rest_api_port", args.rest_api_port)):
        if not -1 <= port <= 65535:
            raise SystemExit(f"{flag} {port}: a port is 0..65535 (0: a free one, -1: none)")
    rest = None if args.rest_api_port < 0 else args.rest_api_port
    grpc_port = None if args.port < 0 else args.port
    if rest is None and grpc_port is None:
        raise SystemExit("--port -1 and --rest_api_port -1: nothing would be served")
    if rest and rest == grpc_port:
        raise SystemExit(f"--port (gRPC) and --rest_api_port (REST) are both {rest}; "
                         "since the gRPC API arrived, --port is TF Serving's gRPC port")
    return Server(args.model_base_path, args.model_name, args.host, rest, args.poll_seconds,
                  args.num_versions, labels, grpc_port=grpc_port, models=models,
                  batching=batching, metrics_path=metrics_path,
                  max_body_bytes=args.max_body_bytes, warmup=args.enable_model_warmup,
                  grpc_threads=args.grpc_threads)


def run(args):
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    set_tf_threads(args.tf_threads)
    server = server_from_args(args).start()
    print(server.describe(), flush=True)  # once it answers: scripts wait for this line
    server.serve_forever()
    return 0
