"""labquake_tf: predict laboratory earthquakes from acoustic emission.

The package reads as layers, lowest first; imports flow only down (CONTRIBUTING.md,
"Layers"): ``errors``, ``files`` -> ``simulate`` (a physics-based source of records)
-> ``data`` (records -> features, targets, event splits, TFRecord shards) ->
``models`` (the TCN) -> ``training`` -> ``evaluation`` -> ``tuning`` -> ``serving``
(SavedModel export, REST/gRPC client and server) -> ``streaming`` -> ``jobs`` (the
commands that compose them: pretrain, finetune, evaluate, tune, ...) -> ``cli``.

Submodules are imported lazily so ``import labquake_tf`` stays cheap. The public
API is named here and resolved on first use (``PUBLIC``): a name table, not an
import of the layers above, so the root stays the bottom layer for the constants
below.

Example:
    >>> import labquake_tf as lq
    >>> task = lq.LabquakeRegressor.from_preset("p4581-shear-stress")   # doctest: +SKIP
"""

import importlib
import os

__version__ = "0.1.0"

TARGETS = ("shear_stress", "ttsf", "ttef")
"""Targets the package knows: shear stress, time to start / end of failure."""

TARGET_UNITS = {"shear_stress": "MPa", "ttsf": "s", "ttef": "s"}

PUBLIC = {"LabquakeRegressor": "labquake_tf.task", "presets": "labquake_tf.task",
          "Preprocessor": "labquake_tf.models", "finetune": "labquake_tf.jobs.finetune"}
"""The package's public names -> the module that defines each."""


def __getattr__(name):
    if name in PUBLIC:
        return getattr(importlib.import_module(PUBLIC[name]), name)
    raise AttributeError(f"module 'labquake_tf' has no attribute {name!r}")


def quiet_tensorflow_logs():
    """TensorFlow's C++ start-up lines off (CUDA factories, TF-TRT, cpu_feature_guard:
    level 3, as ``labquake`` sets it): call before TensorFlow is first imported, which
    reads the level once. A level the caller set is kept."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
