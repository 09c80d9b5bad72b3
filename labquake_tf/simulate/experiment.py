"""One simulated experiment → one HDF5 record in the package's layout (CONTRIBUTING.md)."""

import json
import os
import pathlib
import sys

import h5py
import numpy as np

from labquake_tf import __version__
from labquake_tf.simulate import ae
from labquake_tf.simulate.fault import simulate_fault
from labquake_tf.simulate.presets import PRESETS, SimulationConfig

MODES = ("features", "waveform")
FORMAT, VERSION = "labquake-hdf5", 1


def resolve_config(preset="biaxial", **overrides):
    """A preset name (or a ``SimulationConfig``) with parameters overridden by name."""
    if isinstance(preset, SimulationConfig):
        config = preset
    elif preset in PRESETS:
        config = PRESETS[preset]
    else:
        raise ValueError(f"unknown simulation preset {preset!r}; choose from {sorted(PRESETS)}")
    return config.replace(**overrides)


class ProgressBar:
    """A one-line progress bar on stderr."""

    def __init__(self, label, width=30):
        self.label, self.width, self.last = label, width, -1

    def __call__(self, fraction):
        filled = int(fraction * self.width)
        if filled != self.last:
            self.last = filled
            bar = "#" * filled + "." * (self.width - filled)
            print(f"\r{self.label} [{bar}] {fraction:4.0%}", end="", file=sys.stderr, flush=True)
            if fraction >= 1:
                print(file=sys.stderr)


def generate(preset="biaxial", duration=400.0, seed=0, out=None, mode="features", name=None,
             progress=None, **overrides):
    """Simulate ``duration`` s and write the record to ``out``; returns its path.

    mode "features" writes ``/features/logvar`` (the AE's log10 variance per
    window, computed without materialising the waveform); "waveform" writes the
    raw AE to ``/ae`` at ``sample_rate``. Both draw the same fault history and
    micro-events from ``seed``. ``overrides`` name any field of
    ``SimulationConfig``, ``FaultParams`` or ``AEParams`` (e.g. ``stiffness``,
    ``n_channels``, ``sample_rate``). ``progress(fraction)`` reports progress.
    The file is written under a temporary name and renamed when complete.
    """
    if out is None:
        raise ValueError("generate: out= (the HDF5 file to write) is required")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if not duration > 0:
        raise ValueError(f"duration must be > 0 s, got {duration!r}")
    config = resolve_config(preset, **overrides)
    name = name or f"synthetic-{preset if isinstance(preset, str) else 'custom'}"
    report = progress or (lambda fraction: None)
    fault_seed, event_seed, noise_seed, mech_seed = np.random.SeedSequence(seed).spawn(4)

    history = simulate_fault(config.fault, duration, dt=config.step, seed=fault_seed,
                             spinup=config.spinup, progress=lambda f: report(0.8 * f))
    events = ae.sample_events(history, config.ae, np.random.default_rng(event_seed))
    report(0.85)

    out = pathlib.Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        with h5py.File(tmp, "w") as f:
            f.attrs.update(format=FORMAT, version=VERSION, name=name, seed=seed, mode=mode,
                           preset=preset if isinstance(preset, str) else "custom",
                           config=json.dumps(config.to_dict()),
                           generator=f"labquake_tf {__version__}")
            _write_mech(f, history, config, np.random.default_rng(mech_seed))
            f.create_dataset("truth/events", data=history.events)
            f["truth/events"].attrs["units"] = "s"
            channels = np.array([f"ch{c + 1}" for c in range(config.ae.n_channels)],
                                dtype=h5py.string_dtype())
            if mode == "features":
                logvar = ae.window_logvar(events, config.ae, duration, config.hop, config.window)
                ds = f.create_dataset("features/logvar", data=logvar)
                ds.attrs.update(hop=config.hop, window=config.window, t0=config.window,
                                channel_names=channels)
            else:
                _write_waveform(f, events, config, duration, np.random.default_rng(noise_seed),
                                channels)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    report(1.0)
    return out


def _write_mech(f, history, config, rng):
    every = int(round(1.0 / (config.mech_rate * config.step)))
    stress = history.shear_stress[::every]
    channels = {
        "shear_stress": (stress + rng.normal(0.0, config.stress_noise, len(stress)), "MPa"),
        "normal_stress": (history.normal_stress[::every], "MPa"),
        "displacement": (history.slip[::every], "um"),
    }
    for key, (values, units) in channels.items():
        ds = f.create_dataset(f"mech/{key}", data=values.astype(np.float64))
        ds.attrs.update(sample_rate=config.mech_rate, t0=0.0, units=units)
    f["mech/displacement"].attrs["description"] = "fault slip since t0"


def _write_waveform(f, events, config, duration, rng, channels):
    params = config.ae
    n = int(round(duration * params.sample_rate))
    ds = f.create_dataset("ae", shape=(n, params.n_channels), dtype=np.float32,
                          chunks=(min(n, 2 ** 16), params.n_channels))
    ds.attrs.update(sample_rate=params.sample_rate, t0=0.0, channel_names=channels)
    start = 0
    for chunk in ae.waveform_chunks(events, params, duration, rng):
        ds[start:start + len(chunk)] = chunk
        start += len(chunk)


def cycle_statistics(path):
    """Count, recurrence (s) and stress drop (MPa) of the true events in a record."""
    with h5py.File(path, "r") as f:
        events = f["truth/events"][()]
        stress = f["mech/shear_stress"]
        rate, t0 = stress.attrs["sample_rate"], stress.attrs["t0"]
        idx = np.clip(np.round((events - t0) * rate).astype(int), 0, len(stress) - 1)
        stress = stress[()]
    drops = stress[idx[:, 0]] - stress[idx[:, 1]] if len(events) else np.zeros(0)
    recurrence = np.diff(events[:, 0])
    nan = float("nan")
    return {
        "count": int(len(events)),
        "recurrence_mean": float(recurrence.mean()) if len(recurrence) else nan,
        "recurrence_std": float(recurrence.std()) if len(recurrence) else nan,
        "stress_drop_mean": float(drops.mean()) if len(drops) else nan,
        "stress_drop_std": float(drops.std()) if len(drops) else nan,
    }
