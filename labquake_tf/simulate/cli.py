"""``labquake simulate``: write a synthetic lab-quake record (HDF5), optionally a PNG.

    labquake simulate --preset biaxial --duration 400 --out sim.h5 --plot sim.png
"""

import ast
import sys
import time

from labquake_tf.simulate.experiment import MODES, ProgressBar
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
    from labquake_tf.simulate.experiment import cycle_statistics, generate

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
        from labquake_tf.simulate.plot import plot_record
        print(f"plot: {plot_record(path, args.plot)}")
    return 0
