"""labquake_tf: predict laboratory earthquakes from acoustic emission.

The package reads as layers, lowest first; imports flow only down (CONTRIBUTING.md,
"Layers"): ``errors``, ``files`` -> ``simulate`` (a physics-based source of records)
-> ``data`` (records -> features, targets, event splits, TFRecord shards) ->
``models`` (the TCN) -> ``training`` -> ``evaluation`` -> ``tuning`` -> ``serving``
(SavedModel export, REST/gRPC client and server) -> ``streaming`` -> ``jobs`` (the
commands that compose them: pretrain, finetune, evaluate, tune, ...) -> ``cli``.

Submodules are imported lazily so ``import labquake_tf`` stays cheap.
"""

__version__ = "0.1.0"

TARGETS = ("shear_stress", "ttsf", "ttef")
"""Targets the package knows: shear stress, time to start / end of failure."""

TARGET_UNITS = {"shear_stress": "MPa", "ttsf": "s", "ttef": "s"}
