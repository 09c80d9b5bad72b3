"""One loaded SavedModel version: its signatures, called with numpy arrays, their batchers,
and the warmup replayed before it serves.

``load(version, path, batching, warmup)`` is the one way a version dir becomes a
``Servable``: ``registry.ModelRegistry`` calls it for each version its policy wants.
"""

import json
import pathlib

import numpy as np

from labquake_tf.files import EXPORT_METADATA
from labquake_tf.serving.batching import Batcher, QueueFullError, run_then
from labquake_tf.serving.export import DEFAULT_SIGNATURE, WARMUP_FILE, read_warmup
from labquake_tf.serving.status import ServingError


def load(version, path, batching=None, warmup=True):
    """The SavedModel in ``path`` as version ``version``, warmed up (``warmup``), with a
    batcher per batchable signature when ``batching`` (TF Serving's parameters) is given."""
    return Servable(version, path, batching, warmup)


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


def _dims(shape):
    return [-1 if d is None else int(d) for d in shape]
