"""labquake_tf: predict laboratory earthquakes from acoustic emission.

The package reads as a pipeline: ``data`` (records -> features, targets, event
splits, TFRecord shards) -> ``simulate`` (a physics-based source of records) ->
``models`` (the TCN) -> ``training`` (pretraining, fine-tuning) -> ``evaluation``
-> ``tuning`` -> ``serving`` (SavedModel export, REST client and server).

Submodules are imported lazily so ``import labquake_tf`` stays cheap.
"""

__version__ = "0.1.0"

TARGETS = ("shear_stress", "ttsf", "ttef")
"""Targets the package knows: shear stress, time to start / end of failure."""

TARGET_UNITS = {"shear_stress": "MPa", "ttsf": "s", "ttef": "s"}
