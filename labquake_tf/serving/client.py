"""A client for TF Serving's REST and gRPC APIs; works the same against ``labquake serve``.

    client = Client("http://localhost:8501", "p4581")   # or "grpc://localhost:8500"
    client.status()                       # GET  /v1/models/p4581  (ModelService.GetModelStatus)
    out = client.predict(windows)         # POST /v1/models/p4581:predict  (Predict)
    out["shear_stress"]                   # MPa, one value per window

Over REST it needs ``urllib3`` and numpy only (no TensorFlow import). Over gRPC it uses
``grpcio`` and ``tensorflow-serving-api``'s stubs, whose protos import TensorFlow; the
answers (status, metadata, outputs) have the same form either way.

Retries are the libraries' own policies, the same on both APIs: a request is sent again
only when it never reached the server (the connection failed) or the server said it is
busy (HTTP 503, gRPC UNAVAILABLE), after an exponential backoff with jitter; any other
answer (a 500 included) comes back at once with the server's message.
"""

import json
import random
import threading
import urllib.parse

import numpy as np
import urllib3
from urllib3.exceptions import ConnectTimeoutError, HTTPError
from urllib3.util import Retry, Timeout

from labquake_tf.serving.status import HTTP_STATUS, ServingError
from labquake_tf.serving.tensors import to_ndarray, to_tensor_proto


class Client:
    """Talks to one model (optionally one version) on a TF Serving REST (``http://``) or
    gRPC (``grpc://``) endpoint.

    REST connections are kept alive, one per thread; gRPC shares one channel. A failed
    connection, a 503 and UNAVAILABLE are retried ``retries`` times, after ``backoff``
    seconds doubled on each retry plus up to ``backoff`` of jitter; nothing else is.
    """

    def __init__(self, base_url, model, version=None, timeout=10.0, retries=2, backoff=0.2):
        url = urllib.parse.urlsplit(base_url if "//" in base_url else f"http://{base_url}")
        if url.scheme not in ("http", "https", "grpc") or not url.hostname:
            raise ValueError(f"base_url must look like http://host:port or grpc://host:port, "
                             f"got {base_url!r}")
        self._grpc = _Grpc(url, model, version, timeout, retries, backoff) \
            if url.scheme == "grpc" else None
        self.base_url, self.model, self.version = base_url.rstrip("/"), model, version
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self._url = url
        self._local = threading.local()
        self._names = {}
        where = f"/versions/{int(version)}" if version is not None else ""
        self._path = f"{url.path.rstrip('/')}/v1/models/{model}{where}"

    def status(self):
        if self._grpc:
            return self._retrying(self._grpc.status)
        return self._request("GET", self._path)

    def metadata(self):
        if self._grpc:
            return self._retrying(self._grpc.metadata)
        return self._request("GET", self._path + "/metadata")

    def signature(self, name="serving_default"):
        """``(inputs, outputs)``: ``{name: shape}`` with -1 for any size, from the metadata."""
        defs = self.metadata()["metadata"]["signature_def"]["signature_def"]
        if name not in defs:
            raise KeyError(f"{self.model} has no signature {name!r}; it has {sorted(defs)}")

        def shapes(tensors):
            return {k: [int(d["size"]) for d in t["tensor_shape"]["dim"]]
                    for k, t in tensors.items()}
        return shapes(defs[name]["inputs"]), shapes(defs[name]["outputs"])

    def model_metadata(self):
        """The export's own metadata (``feature_names``, ``target_names``, ``seq_len``, ...)
        from its ``metadata`` signature."""
        if self._grpc:
            out = self._retrying(lambda: self._grpc.predict({}, "metadata"))["metadata_json"]
            return json.loads(out.item())
        reply = self._request("POST", self._path + ":predict",
                              {"signature_name": "metadata", "inputs": {}})
        out = reply.get("outputs")
        if isinstance(out, dict):
            out = out.get("metadata_json")
        return json.loads(out)

    def predict(self, inputs, signature_name=None, format="row", batch_size=None):
        """Outputs as ``{name: np.ndarray}`` for ``inputs`` (an array, or a dict of arrays
        for several inputs), split into requests of at most ``batch_size`` examples."""
        if format not in ("row", "columnar"):
            raise ValueError(f"format must be 'row' or 'columnar', got {format!r}")
        named = isinstance(inputs, dict)
        # No float32 copy of the whole input: a sliding-window view of a long series
        # would blow up to n_steps * seq_len values. Chunks are converted one at a time.
        arrays = {k: np.asarray(v) for k, v in inputs.items()} if named \
            else {None: np.asarray(inputs)}
        n = len(next(iter(arrays.values())))
        step = batch_size or max(n, 1)
        parts = []
        for start in range(0, n, step):
            chunk = {k: np.asarray(v[start:start + step], np.float32) for k, v in arrays.items()}
            parts.append(self._predict_once(chunk, signature_name, format, named))
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def predict_series(self, features, seq_len, batch_size=256, signature_name=None):
        """Predictions for every window of a long ``(n_steps, n_features)`` series: output
        ``i`` is for the window ending at step ``seq_len - 1 + i``."""
        from labquake_tf.data.windows import cut

        features = np.asarray(features, np.float32)
        if features.ndim != 2 or len(features) < seq_len:
            raise ValueError(f"features must be (n_steps >= {seq_len}, n_features), "
                             f"got {features.shape}")
        return self.predict(cut(features, None, seq_len), signature_name, batch_size=batch_size)

    def _predict_once(self, chunk, signature_name, format, named):
        if self._grpc:  # tensors travel as TensorProtos, named: ``format`` does not apply
            feeds = chunk if named else {self._single_input(signature_name): chunk[None]}
            return self._retrying(lambda: self._grpc.predict(feeds, signature_name))
        body = {"signature_name": signature_name} if signature_name else {}
        if format == "row":
            if named:
                body["instances"] = [dict(zip(chunk, row))
                                     for row in zip(*(v.tolist() for v in chunk.values()))]
            else:
                body["instances"] = chunk[None].tolist()
        else:
            body["inputs"] = {k: v.tolist() for k, v in chunk.items()} if named \
                else chunk[None].tolist()
        reply = self._request("POST", self._path + ":predict", body)
        if format == "row":
            rows = reply["predictions"]
            if rows and isinstance(rows[0], dict):
                return {k: np.asarray([r[k] for r in rows]) for k in rows[0]}
            return {self._single_output(signature_name): np.asarray(rows)}
        outputs = reply["outputs"]
        if isinstance(outputs, dict):
            return {k: np.asarray(v) for k, v in outputs.items()}
        return {self._single_output(signature_name): np.asarray(outputs)}

    def _single_output(self, signature_name):
        # TF Serving drops the name when a signature has one output (e.g. a model
        # trained on shear_stress only); the metadata still has it.
        name = signature_name or "serving_default"
        if name not in self._names:
            (self._names[name],) = self.signature(name)[1]
        return self._names[name]

    def _single_input(self, signature_name):
        name = f"input:{signature_name or 'serving_default'}"
        if name not in self._names:
            (self._names[name],) = self.signature(signature_name or "serving_default")[0]
        return self._names[name]

    def _retrying(self, call):
        """``call()`` (a gRPC call, retried by the channel's service config), its errors
        as ``ServingError``, or ``ConnectionError`` when no server answered."""
        import grpc

        try:
            return call()
        except grpc.RpcError as e:
            code, details = e.code(), e.details()
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED) \
                    and not self._grpc.answered:
                tries = self.retries + 1 if code == grpc.StatusCode.UNAVAILABLE else 1
                raise ConnectionError(f"{self.base_url}: gRPC {code.name}: {details} "
                                      f"(after {tries} tries)") from None
            raise ServingError(HTTP_STATUS.get(code.name, 500), details, self.base_url,
                               code.name) from None

    def _pool(self):
        pool = getattr(self._local, "pool", None)
        if pool is None:
            retry = _Backoff(total=self.retries, connect=self.retries, read=0, other=0,
                             status=self.retries, redirect=0, status_forcelist={503},
                             allowed_methods=None, backoff_factor=self.backoff,
                             backoff_jitter=self.backoff, raise_on_status=False)
            cls = urllib3.HTTPSConnectionPool if self._url.scheme == "https" \
                else urllib3.HTTPConnectionPool
            pool = self._local.pool = cls(self._url.hostname, self._url.port, maxsize=1,
                                          retries=retry, timeout=Timeout(self.timeout))
        return pool

    def _request(self, method, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else {}
        url = self.base_url + path[len(self._url.path.rstrip("/")):]
        try:
            response = self._pool().urlopen(method, path, body=data, headers=headers)
        except HTTPError as e:
            reason = getattr(e, "reason", None) or e
            # Only a connection that was never made is tried again (see ``_Backoff``).
            tries = self.retries + 1 if isinstance(reason, ConnectTimeoutError) else 1
            raise ConnectionError(f"{url}: {type(reason).__name__}: {reason} "
                                  f"(after {tries} tries)") from e
        status, payload = response.status, response.data
        try:
            reply = json.loads(payload)
        except ValueError:
            raise ServingError(status, payload[:200].decode(errors="replace"), url) from None
        if status != 200:
            message = reply.get("error", payload.decode()) if isinstance(reply, dict) else reply
            raise ServingError(status, message, url)
        return reply

    def close(self):
        if self._grpc:
            self._grpc.close()
        pool = getattr(self._local, "pool", None)
        if pool is not None:
            pool.close()
            self._local.pool = None


class _Backoff(Retry):
    """urllib3's policy, except that the first retry waits too: a 503 means busy now."""

    def get_backoff_time(self):
        n = len(self.history)
        if n == 0:
            return 0.0
        wait = min(self.backoff_max, self.backoff_factor * 2 ** (n - 1))
        return wait + random.uniform(0, self.backoff_jitter)


def grpc_service_config(retries, backoff):
    """gRPC's retry policy for TF Serving's services: UNAVAILABLE only, ``retries`` times,
    exponential backoff (gRPC adds the jitter)."""
    services = [{"service": "tensorflow.serving.PredictionService"},
                {"service": "tensorflow.serving.ModelService"}]
    config = {"name": services}
    if retries > 0:
        config["retryPolicy"] = {
            "maxAttempts": min(retries + 1, 5),  # gRPC's own cap
            "initialBackoff": f"{max(backoff, 0.001):.3f}s",
            "maxBackoff": f"{max(backoff, 0.001) * 2 ** retries:.3f}s",
            "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]}
    return json.dumps({"methodConfig": [config]})


class _Grpc:
    """The gRPC half of ``Client``: TF Serving's own stubs on one channel."""

    def __init__(self, url, model, version, timeout, retries=2, backoff=0.2):
        import grpc
        from tensorflow_serving.apis import (model_service_pb2_grpc,
                                             prediction_service_pb2_grpc)

        self.model, self.version, self.timeout = model, version, timeout
        self.channel = grpc.insecure_channel(
            f"{url.hostname}:{url.port or 8500}",
            options=[("grpc.max_receive_message_length", -1),
                     ("grpc.max_send_message_length", -1),
                     ("grpc.enable_retries", 1),
                     ("grpc.service_config", grpc_service_config(retries, backoff))])
        self.predictions = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.models = model_service_pb2_grpc.ModelServiceStub(self.channel)
        self.answered = False  # once the server answered, UNAVAILABLE means busy, not absent

    def _spec(self, spec, signature_name=None):
        spec.name = self.model
        if self.version is not None:
            spec.version.value = int(self.version)
        if signature_name:
            spec.signature_name = signature_name

    def _call(self, method, request):
        reply = method(request, timeout=self.timeout)
        self.answered = True
        return reply

    def status(self):
        from google.protobuf import json_format
        from tensorflow_serving.apis import get_model_status_pb2

        request = get_model_status_pb2.GetModelStatusRequest()
        self._spec(request.model_spec)
        return json_format.MessageToDict(self._call(self.models.GetModelStatus, request),
                                         preserving_proto_field_name=True,
                                         including_default_value_fields=True)

    def metadata(self):
        from google.protobuf import json_format
        from tensorflow_serving.apis import get_model_metadata_pb2

        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        self._spec(request.model_spec)
        reply = self._call(self.predictions.GetModelMetadata, request)
        defs = get_model_metadata_pb2.SignatureDefMap()
        reply.metadata["signature_def"].Unpack(defs)
        return {"model_spec": json_format.MessageToDict(reply.model_spec,
                                                        preserving_proto_field_name=True,
                                                        including_default_value_fields=True),
                "metadata": {"signature_def": json_format.MessageToDict(
                    defs, preserving_proto_field_name=True)}}

    def predict(self, feeds, signature_name=None):
        from tensorflow_serving.apis import predict_pb2

        request = predict_pb2.PredictRequest()
        self._spec(request.model_spec, signature_name)
        for name, array in feeds.items():
            request.inputs[name].CopyFrom(to_tensor_proto(np.asarray(array, np.float32)))
        reply = self._call(self.predictions.Predict, request)
        return {k: to_ndarray(v) for k, v in reply.outputs.items()}

    def close(self):
        self.channel.close()
