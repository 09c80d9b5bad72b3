"""A physics-based source of lab-quake records.

``generate(preset, duration, seed, out)`` runs a rate-and-state spring-slider
(``fault``), drives an acoustic-emission generator with its slip rate and stress
(``ae``) and writes an HDF5 record that the data readers take like any lab
record. Presets (``PRESETS``): ``biaxial`` (~20 s cycles), ``dds`` (~6 s),
``slow`` (slow slip near the critical stiffness).
"""

from labquake_tf.simulate.ae import (AEParams, aki_b_value, sample_events, waveform_chunks,
                                     window_logvar)
from labquake_tf.simulate.fault import FaultHistory, FaultParams, simulate_fault
from labquake_tf.simulate.experiment import (ProgressBar, cycle_statistics, generate,
                                             resolve_config)
from labquake_tf.simulate.presets import PRESETS, SimulationConfig

__all__ = [
    "AEParams", "FaultHistory", "FaultParams", "PRESETS", "ProgressBar", "SimulationConfig", "aki_b_value",
    "cycle_statistics", "generate", "resolve_config", "sample_events", "simulate_fault",
    "waveform_chunks", "window_logvar",
]
