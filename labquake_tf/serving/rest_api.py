"""TF Serving's REST API: routes, and JSON bodies to and from tensors.

* ``GET  /v1/models/NAME[/versions/N|/labels/L]`` (status),
* ``GET  /v1/models/NAME[/versions/N|/labels/L]/metadata`` (signature defs),
* ``POST /v1/models/NAME[/versions/N|/labels/L]:predict`` (row ``instances`` or
  columnar ``inputs``),
* ``GET  /monitoring/prometheus/metrics`` with ``--monitoring_config_file``.

Errors are ``{"error": "..."}`` with TF Serving's statuses (400 bad input, 404 unknown model
or version, 503 batch queue full). Not served: ``:classify``/``:regress``, ``b64`` inputs.
The HTTP front (``http_front``) hands each request to ``RestApi.respond``.
"""

import json
import logging
import re
import time

import numpy as np

from labquake_tf.serving.export import DEFAULT_SIGNATURE
from labquake_tf.serving.status import ServingError

log = logging.getLogger(__name__)

_URL = re.compile(r"^/v1/models/(?P<name>[^/:]+)"
                  r"(?:/versions/(?P<version>-?\d+)|/labels/(?P<label>[^/:]+))?"
                  r"(?:(?P<metadata>/metadata)|:(?P<verb>[A-Za-z]+))?/?$")


class RestApi:
    """Answers REST requests for ``server`` (its ``model(name)``, ``metrics`` and
    ``metrics_path``)."""

    def __init__(self, server):
        self.server = server

    def respond(self, method, path, body, reply, pool):
        """One REST request -> ``reply(status, data, content_type)``, called once: now, or
        from a batch or ``pool`` thread once the model call it waits for is done."""
        clean, metrics = path.split("?", 1)[0], self.server.metrics
        if method == "GET" and self.server.metrics_path and clean == self.server.metrics_path:
            return reply(200, metrics.render().encode(), "text/plain; version=0.0.4")
        m, t0 = _URL.match(clean), time.perf_counter()

        def answer(status, payload, code="OK"):
            if m:
                api = "GetModelMetadata" if m["metadata"] else \
                    "Predict" if m["verb"] else "GetModelStatus"
                metrics.observe(m["name"], api, "REST", code, time.perf_counter() - t0)
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
        registry = self.server.model(m["name"])
        where = dict(version=int(m["version"]) if m["version"] else None, label=m["label"])
        if method == "GET" and not m["verb"]:
            return registry.metadata(**where) if m["metadata"] else registry.status(**where)
        if method == "POST" and m["verb"] == "predict" and not m["metadata"]:
            return predict(registry, body, **where)
        if method == "POST" and m["verb"] in ("classify", "regress"):
            raise ServingError(400, f":{m['verb']} is not served here; use :predict")
        raise ServingError(400, f"Malformed request: {method} {path}")


def predict(registry, body, version=None, label=None):
    """A REST ``:predict`` body (bytes) -> ``(servable, signature name, {input: array},
    reply)``, where ``reply(outputs)`` is TF Serving's JSON answer."""
    servable = registry.get(version, label)
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
