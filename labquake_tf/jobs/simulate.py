"""``labquake simulate``: write a synthetic lab-quake record (HDF5), optionally a PNG.

    labquake simulate --preset biaxial --duration 400 --out sim.h5 --plot sim.png

A job, not part of ``simulate``: the quick-look plot reads a waveform record with
``data.features``, and ``data`` sits above ``simulate`` (the registry generates
synthetic records with it).
"""

import ast
import sys
import time

import h5py
import numpy as np

from labquake_tf.data.features import LogVariance
from labquake_tf.simulate.experiment import MODES, ProgressBar, cycle_statistics, generate
from labquake_tf.simulate.presets import PRESETS


def add_arguments(parser):
    parser.add_argument("--preset", default="biaxial", choices=sorted(PRESETS))
    parser.add_argument("--duration", type=float, default=400.0, help="seconds (default 400)")
    parser.add_argument("--out", required=True, help="HDF5 file to write")
    parser.add_argument("--mode", default="features", choices=MODES,
                        help="features: AE log-variance without the waveform (fast); "
                             "waveform: the raw AE at --set sample_rate=HZ")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", help="experiment name stored in the file")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a parameter, e.g. --set stiffness=0.0005 (repeatable)")
    parser.add_argument("--plot", metavar="PNG",
                        help="save stress, slip rate and AE over a few cycles")


def parse_overrides(items):
    """``["stiffness=5e-4", "law=slip"]`` → ``{"stiffness": 0.0005, "law": "slip"}``."""
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            overrides[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            overrides[key] = value
    return overrides


def run(args):
    try:
        overrides = parse_overrides(args.set)
        start = time.perf_counter()
        path = generate(args.preset, args.duration, args.seed, args.out, mode=args.mode,
                        name=args.name, progress=ProgressBar(f"simulate {args.preset}"), **overrides)
    except ValueError as err:
        print(f"labquake simulate: error: {err}", file=sys.stderr)
        return 2
    elapsed = time.perf_counter() - start
    stats = cycle_statistics(path)
    print(f"wrote {path} ({args.duration:g} s, {args.mode}) in {elapsed:.1f} s")
    print(f"cycles: {stats['count']}, recurrence {stats['recurrence_mean']:.2f} ± "
          f"{stats['recurrence_std']:.2f} s, stress drop {stats['stress_drop_mean']:.3f} ± "
          f"{stats['stress_drop_std']:.3f} MPa")
    if args.plot:
        print(f"plot: {plot_record(path, args.plot)}")
    return 0


def plot_record(path, png, cycles=4):
    """Save a PNG of the first ``cycles`` true events of the HDF5 record ``path``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with h5py.File(path, "r") as f:
        mech = f["mech/shear_stress"]
        rate, t0 = mech.attrs["sample_rate"], mech.attrs["t0"]
        t_mech = t0 + np.arange(len(mech)) / rate
        stress = mech[()]
        slip_rate = np.gradient(f["mech/displacement"][()], 1.0 / rate)
        events = f["truth/events"][()]
        t_feat, logvar = _logvar(f)
        name = f.attrs["name"]

    if len(events):
        last = events[min(cycles, len(events)) - 1]
        margin = 0.5 * (last[1] - events[0, 0]) / cycles
        lo, hi = max(t_mech[0], events[0, 0] - margin), last[1] + 2.0
    else:
        lo, hi = t_mech[0], min(t_mech[-1], 60.0)
    in_mech, in_feat = (t_mech >= lo) & (t_mech <= hi), (t_feat >= lo) & (t_feat <= hi)

    fig, axes = plt.subplots(3, 1, figsize=(10, 7), sharex=True)
    axes[0].plot(t_mech[in_mech], stress[in_mech], lw=0.8)
    axes[0].set_ylabel("shear stress (MPa)")
    axes[1].semilogy(t_mech[in_mech], np.maximum(slip_rate[in_mech], 1e-3), lw=0.8)
    axes[1].set_ylabel("slip rate (µm/s)")
    axes[2].plot(t_feat[in_feat], logvar[in_feat], lw=0.5)
    axes[2].set_ylabel("AE log10 variance")
    axes[2].set_xlabel("time (s)")
    for ax in axes:
        for onset, end in events:
            if lo <= onset <= hi:
                ax.axvspan(onset, end, color="tab:red", alpha=0.15, lw=0)
    axes[0].set_title(f"{name}: failures shaded")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


def _logvar(f):
    """Window end times and log-variance of channel 1, from features or the waveform."""
    if "features/logvar" in f:
        ds = f["features/logvar"]
        return ds.attrs["t0"] + ds.attrs["hop"] * np.arange(len(ds)), ds[:, 0]
    ds = f["ae"]
    lv = LogVariance(ds.attrs["sample_rate"])
    step = 2 ** 20
    values = np.concatenate([lv.update(ds[i:i + step, :1]) for i in range(0, len(ds), step)])[:, 0]
    return lv.window_end_time(np.arange(len(values)), ds.attrs["t0"]), values
