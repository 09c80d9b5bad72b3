"""Which devices train, and in which precision.

``get_strategy`` picks a ``tf.distribute`` strategy (so scaling out is
tf.distribute's job, nothing home-made); ``set_precision`` picks the Keras
dtype policy. Both must run before the model is built.
"""

import json
import os

import keras
import tensorflow as tf

STRATEGIES = ("auto", "default", "mirrored", "multiworker")
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")

# MultiWorkerMirroredStrategy configures collectives once per process; asking
# again (e.g. a job that calls get_strategy at start-up and again in train())
# must return the same object.
_cache = {}


def get_strategy(name="auto"):
    """A tf.distribute strategy by name; "auto" reads the environment.

    auto: MultiWorkerMirroredStrategy when ``TF_CONFIG`` is set, MirroredStrategy
    when more than one GPU is visible, else the default (one-device) strategy.
    "mirrored" without GPUs mirrors over the logical CPU devices.
    """
    if name not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {name!r}")
    if name == "auto":
        if os.environ.get("TF_CONFIG"):
            name = "multiworker"
        elif len(tf.config.list_physical_devices("GPU")) > 1:
            name = "mirrored"
        else:
            name = "default"
    if name == "default":
        return tf.distribute.get_strategy()
    if name not in _cache:
        _cache[name] = _make(name)
    return _cache[name]


def _make(name):
    if name == "multiworker":
        if not os.environ.get("TF_CONFIG"):
            raise ValueError("strategy 'multiworker' needs the TF_CONFIG environment variable")
        json.loads(os.environ["TF_CONFIG"])  # fail here, with the JSON error, not deep in TF
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_logical_devices("GPU")
    if gpus:
        return tf.distribute.MirroredStrategy([d.name for d in gpus])
    # NCCL is GPU-only; on CPUs reduce through one device.
    cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
    return tf.distribute.MirroredStrategy(cpus, cross_device_ops=tf.distribute.ReductionToOneDevice())


def is_chief(strategy):
    """Whether this process writes run dirs and exports (always, outside multi-worker)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    if "chief" in resolver.cluster_spec().as_dict():
        return resolver.task_type == "chief"
    return resolver.task_type == "worker" and resolver.task_id == 0


def set_precision(name="auto"):
    """Set the global Keras dtype policy and return its name.

    auto: mixed_float16 on GPU; float32 on CPU, where mixed_float16 measured
    about 3x slower than float32 (mixed_bfloat16 about 7x).
    """
    if name not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {name!r}")
    if name == "auto":
        name = "mixed_float16" if tf.config.list_physical_devices("GPU") else "float32"
    keras.mixed_precision.set_global_policy(name)
    return name
