"""Score failure alarms: replay a run's test split through ``labquake stream`` and count
how many failures were warned of in advance.

    python benchmarks/stream_alarms.py runs/ft-p5198-ttsf --thresholds 0.5,1,2 --plot alarms.png

The run (a TTsF model, streamable or not) is replayed over its own record's test split
(the steps before it only warm the stream up). An alarm ``ttsf<θ`` fires when the
prediction crosses below θ; it is a true warning when a failure (stress-drop onset from
the record's event detection) starts within ``max_lead`` = ``--lead-factor`` x θ seconds
after it, else a false alarm. Per threshold: fraction of test events warned, median lead
time, false alarms per minute. One JSON line per threshold.
"""

import argparse
import json
import os
import pathlib
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import numpy as np  # noqa: E402


def replay(run, thresholds, engine="auto"):
    from labquake_tf.cli import main

    with tempfile.TemporaryDirectory() as tmp:
        out = pathlib.Path(tmp) / "stream.jsonl"
        args = ["stream", "--model", str(run), "--input", _dataset(run), "--split", "test",
                "--out", str(out), "--quiet", "--engine", engine]
        for t in thresholds:
            args += ["--alarm", f"ttsf<{t:g}"]
        if main(args) != 0:
            raise SystemExit(f"labquake stream failed on {run}")
        lines = [json.loads(x) for x in out.read_text().splitlines()]
    preds = [r for r in lines if "alarm" not in r and "reset" not in r]
    alarms = [r for r in lines if "alarm" in r]
    return (np.array([r["time"] for r in preds]), np.array([r["ttsf"] for r in preds]), alarms)


def _dataset(run):
    manifest = json.loads((pathlib.Path(run) / "manifest.json").read_text())
    return manifest["request"]["dataset"] if "request" in manifest else manifest["dataset"]


def score(run, thresholds, lead_factor=2.0, engine="auto", plot=None):
    from labquake_tf.data.registry import load_record
    from labquake_tf.streaming.alarms import score_alarms

    manifest = json.loads((pathlib.Path(run) / "manifest.json").read_text())
    test = manifest["splits"]["test"]
    record = load_record(_dataset(run))
    onsets = record.time[record.events[:, 0]]
    time, ttsf, alarms = replay(run, thresholds, engine)
    rows = []
    for t in thresholds:
        mine = [a["time"] for a in alarms if a["alarm"] == f"ttsf<{t:g}"]
        s = score_alarms(mine, onsets, test["t_start"], test["t_end"], lead_factor * t)
        s.pop("lead_times_s")
        rows.append({"run": str(run), "dataset": _dataset(run), "threshold_s": t,
                     "max_lead_s": lead_factor * t, **s})
    if plot:
        _plot(plot, record, time, ttsf, alarms, onsets, test, thresholds)
    return rows


def _plot(path, record, time, ttsf, alarms, onsets, test, thresholds):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t0 = test["t_start"]
    t1 = min(test["t_end"], t0 + 60.0)  # one minute: cycles stay readable
    inside = (time >= t0) & (time <= t1)
    truth = np.interp(time[inside], record.time, record.targets["ttsf"])
    fig, ax = plt.subplots(figsize=(10, 3.2))
    ax.plot(time[inside] - t0, truth, color="0.6", lw=1, label="true TTsF")
    ax.plot(time[inside] - t0, ttsf[inside], color="C3", lw=1, label="streamed prediction")
    for i, t in enumerate(thresholds):
        at = [a["time"] - t0 for a in alarms
              if a["alarm"] == f"ttsf<{t:g}" and t0 <= a["time"] <= t1]
        ax.axhline(t, color=f"C{i}", lw=0.6, ls=":")
        ax.plot(at, [t] * len(at), "v", color=f"C{i}", ms=6, label=f"alarm ttsf<{t:g} s")
    for o in onsets[(onsets >= t0) & (onsets <= t1)]:
        ax.axvline(o - t0, color="k", lw=0.5, alpha=0.5)
    ax.set_xlabel(f"time since test start {t0:.1f} s (vertical lines: failure onsets)")
    ax.set_ylabel("TTsF (s)")
    ax.legend(loc="upper right", fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", help="fine-tuned TTsF run dirs")
    p.add_argument("--thresholds", default="0.5,1,2")
    p.add_argument("--lead-factor", type=float, default=2.0)
    p.add_argument("--engine", default="auto")
    p.add_argument("--plot", default=None, help="PNG of the first run's first test minute")
    args = p.parse_args(argv)
    thresholds = [float(t) for t in args.thresholds.split(",")]
    for i, run in enumerate(args.runs):
        for row in score(run, thresholds, args.lead_factor, args.engine,
                         args.plot if i == 0 else None):
            print(json.dumps({k: round(v, 4) if isinstance(v, float) else v
                              for k, v in row.items()}), flush=True)


if __name__ == "__main__":
    main()
