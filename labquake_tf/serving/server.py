"""A server speaking TensorFlow Serving's REST and gRPC APIs, for machines without Docker.

``Server`` binds the REST port (``http_front``: HTTP/1.1 parsed by httptools, the routes of
``rest_api``) and the gRPC port (``grpc_api``), loads each model's versions (``registry``,
``servable``), warms them up, then answers. Like TF Serving it serves each model's versions
by policy, polls for new ones, retries a version that failed to load on the next poll,
replays ``assets.extra/tf_serving_warmup_requests`` before a version becomes AVAILABLE, and
batches concurrent requests when given batching parameters (``batching``). The command,
``labquake serve``, is ``serve``.
"""

import logging
import pathlib
import threading
import time

from labquake_tf.serving.http_conn import Limits
from labquake_tf.serving.http_front import Front
from labquake_tf.serving.registry import ModelRegistry
from labquake_tf.serving.rest_api import RestApi
from labquake_tf.serving.status import ServingError

log = logging.getLogger(__name__)


class Server:
    """REST and gRPC front ends, the models, and a thread that polls for new versions;
    a context manager.

    ``port`` is the REST port and ``grpc_port`` the gRPC one: 0 picks a free port (see
    ``url``/``grpc_url``), None serves no such API. One model from ``base_path`` (and
    ``name``, ``num_versions``, ``labels``), or several from ``models`` (dicts as
    ``config.read_model_config`` returns them). ``batching``: a dict of TF Serving's
    batching parameters (``config.read_batching_parameters``), None for no batching.
    ``metrics_path``: where Prometheus metrics are served on the REST port. ``limits``: the
    REST port's ``http_conn.Limits`` (``max_body_bytes`` overrides its body limit, which
    also bounds a gRPC message).
    """

    def __init__(self, base_path=None, name=None, host="127.0.0.1", port=8501, poll_seconds=2.0,
                 num_versions=1, labels=None, *, grpc_port=None, models=None, batching=None,
                 metrics_path=None, max_body_bytes=None, warmup=True, grpc_threads=64,
                 limits=None):
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
        self.limits = limits or Limits()
        if max_body_bytes is not None:
            self.limits.max_body_bytes = max_body_bytes
        self.max_body_bytes = self.limits.max_body_bytes
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
                self.httpd = Front(RestApi(self).respond, host, port,
                                   event_loop=batching is not None, limits=self.limits)
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

        from labquake_tf.serving.grpc_api import add_services  # imports TF Serving's protos

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
