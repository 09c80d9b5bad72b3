"""Request counts and latencies in Prometheus' text format, under TF Serving's names.

TF Serving exports ``/tensorflow/serving/request_count`` (labels ``model_name``,
``status``) and the ``/tensorflow/serving/request_latency`` histogram in microseconds
(labels ``model_name``, ``API``, ``entrypoint``); its Prometheus exporter turns ``/``
into ``:``. Dashboards written for TF Serving read these unchanged.
"""

import bisect
import collections
import threading

COUNT = ":tensorflow:serving:request_count"
LATENCY = ":tensorflow:serving:request_latency"
# TF Serving's request_latency buckets: exponential, 10 us * 1.8**i, 33 of them.
BUCKETS = [10 * 1.8 ** i for i in range(33)]


def _labels(**labels):
    def escape(v):
        return str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return ",".join(f'{k}="{escape(v)}"' for k, v in labels.items())


class Metrics:
    def __init__(self):
        self._lock = threading.Lock()
        self._count = collections.Counter()
        self._hist = {}  # (model, api, entrypoint) -> [bucket counts..., sum, count]

    def observe(self, model, api, entrypoint, status, seconds):
        """One finished request; ``status`` is a gRPC code name (``OK``, ``NOT_FOUND``...)."""
        micros = seconds * 1e6
        with self._lock:
            self._count[(model, status)] += 1
            h = self._hist.setdefault((model, api, entrypoint), [0] * (len(BUCKETS) + 3))
            h[bisect.bisect_left(BUCKETS, micros)] += 1
            h[-2] += micros
            h[-1] += 1

    def render(self):
        with self._lock:
            count, hist = dict(self._count), {k: list(v) for k, v in self._hist.items()}
        lines = [f"# TYPE {COUNT} counter"]
        for (model, status), n in sorted(count.items()):
            lines.append(f"{COUNT}{{{_labels(model_name=model, status=status)}}} {n}")
        lines.append(f"# TYPE {LATENCY} histogram")
        for (model, api, entrypoint), h in sorted(hist.items()):
            labels = _labels(model_name=model, API=api, entrypoint=entrypoint)
            cumulative = 0
            for bound, n in zip(BUCKETS + ["+Inf"], h[:len(BUCKETS) + 1]):
                cumulative += n
                le = bound if isinstance(bound, str) else f"{bound:g}"
                lines.append(f'{LATENCY}_bucket{{{labels},le="{le}"}} {cumulative}')
            lines.append(f"{LATENCY}_sum{{{labels}}} {h[-2]:g}")
            lines.append(f"{LATENCY}_count{{{labels}}} {h[-1]}")
        return "\n".join(lines) + "\n"
