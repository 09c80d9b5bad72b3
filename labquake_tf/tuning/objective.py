"""The tuning objective: validation loss, or validation RMSE in physical units."""

import keras
import keras_tuner as kt
import numpy as np
from keras import ops

from labquake_tf.data.scaling import MinMaxScaler

OBJECTIVES = ("val_loss", "val_rmse_phys")


def objective(name):
    if name not in OBJECTIVES:
        raise ValueError(f"objective {name!r}: expected one of {', '.join(OBJECTIVES)}")
    return kt.Objective(name, direction="min")


@keras.saving.register_keras_serializable(package="labquake_tf")
class PhysicalRMSE(keras.metrics.Metric):
    """RMSE after undoing the min-max target scaling, averaged over targets.

    The loss is on scaled targets, so its value is not comparable across
    datasets or target sets; this is, in MPa and s.
    """

    def __init__(self, scale, name="rmse_phys", **kwargs):
        super().__init__(name=name, **kwargs)
        self.scale = [float(s) for s in np.ravel(scale)]
        n = len(self.scale)
        self.sse = self.add_variable(shape=(n,), initializer="zeros", name="sse")
        self.count = self.add_variable(shape=(), initializer="zeros", name="count")

    @classmethod
    def from_manifest(cls, manifest, targets):
        scaler = MinMaxScaler.from_dict(manifest["scaler"]["targets"]).select(targets)
        return cls(scaler.scale)

    def update_state(self, y_true, y_pred, sample_weight=None):
        err = (ops.cast(y_pred, "float32") - ops.cast(y_true, "float32")) * self.scale
        self.sse.assign_add(ops.sum(ops.square(err), axis=0))
        self.count.assign_add(ops.cast(ops.shape(err)[0], "float32"))

    def result(self):
        return ops.mean(ops.sqrt(self.sse / ops.maximum(self.count, 1.0)))

    def reset_state(self):
        self.sse.assign(ops.zeros_like(self.sse))
        self.count.assign(0.0)

    def get_config(self):
        return {**super().get_config(), "scale": self.scale}
