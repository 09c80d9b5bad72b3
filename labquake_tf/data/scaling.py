"""Min-max scaling, fit on the training part only and stored in the manifest.

Every later step (training, evaluation, export, serving, streaming) rebuilds the
scaler from ``to_dict()`` (the model's ``Preprocessor`` holds one per side) and
scales through ``transform`` / ``inverse_transform`` alone: the same two functions
run on numpy arrays and inside graphs (tf.data, a SavedModel signature), with the
same float32 constants and operations wherever a window is scaled (numpy and TF may
still round a division one float32 step apart).
"""

import numpy as np


class MinMaxScaler:
    """Maps each column of ``x`` from ``[data_min, data_max]`` to ``[0, 1]``."""

    def __init__(self, data_min=None, data_max=None, names=None):
        self.data_min = None if data_min is None else np.asarray(data_min, np.float64)
        self.data_max = None if data_max is None else np.asarray(data_max, np.float64)
        self.names = list(names) if names is not None else None

    def fit(self, x, names=None):
        x = _as_2d(x)
        if not np.all(np.isfinite(x)):
            raise ValueError("MinMaxScaler.fit: input has NaN or inf")
        self.data_min, self.data_max = x.min(axis=0), x.max(axis=0)
        if names is not None:
            self.names = list(names)
        return self

    @property
    def scale(self):
        span = self.data_max - self.data_min
        # A constant column maps to 0 instead of dividing by zero.
        return np.where(span > 0, span, 1.0)

    def affine(self, dtype=np.float32):
        """``(data_min, scale)`` as ``dtype`` arrays."""
        return self.data_min.astype(dtype), self.scale.astype(dtype)

    def transform(self, x):
        """``(x - min) / scale`` in float32: numpy in, numpy out; a tensor in (tf.data,
        a SavedModel graph), a tensor out."""
        lo, scale = self.affine(np.float32)
        if not _is_tensor(x):
            x = np.asarray(x, np.float32)
        return (x - lo) / scale

    def inverse_transform(self, x):
        """``x * scale + min``: float64 for numpy (scores in physical units), float32
        inside a graph, which computes as the model does."""
        if _is_tensor(x):
            lo, scale = self.affine(np.float32)
            return x * scale + lo
        return np.asarray(x, np.float64) * self.scale + self.data_min

    def to_dict(self):
        return {"min": self.data_min.tolist(), "max": self.data_max.tolist(), "names": self.names}

    @classmethod
    def from_dict(cls, d):
        return cls(d["min"], d["max"], d.get("names"))

    def select(self, names):
        """The scaler restricted to some columns, by name (e.g. one target)."""
        idx = [self.names.index(n) for n in names]
        return MinMaxScaler(self.data_min[idx], self.data_max[idx], names)


def _as_2d(x):
    x = np.asarray(x, np.float64)
    return x[:, None] if x.ndim == 1 else x


def _is_tensor(x):
    # numpy never needs TensorFlow: only a tensor's own module is looked at.
    return type(x).__module__.startswith(("tensorflow", "keras", "jax"))
