"""Streamable vs reference TCN accuracy on the same test windows.

    python benchmarks/stream_accuracy.py runs/ft-stream-p4581-s0 runs/ft-ref-p4581-s0 ...

A streamable model reads ``receptive_field - 1`` more steps than its ``seq_len``, so
its first prediction in a split comes later than the reference model's. Each run is
scored (its own data dir, every labelled window end it can predict) and, on the
window ends that ALL the given runs predict, again: the fair comparison. One JSON
line per run.
"""

import argparse
import json
import os
import pathlib
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+")
    p.add_argument("--split", default="test")
    args = p.parse_args(argv)

    import numpy as np

    from labquake_tf.evaluation.metrics import predict, regression_metrics
    from labquake_tf.models import is_streamable
    from labquake_tf.task import LabquakeRegressor

    preds = {}
    for run in args.runs:
        task = LabquakeRegressor.from_preset(run)
        preds[run] = (predict(task, pathlib.Path(run) / "data", args.split),
                      is_streamable(task.network))
    common = None
    for p_, _ in preds.values():
        t = np.round(p_["time"], 6)
        common = t if common is None else np.intersect1d(common, t)
    for run, (p_, streamable) in preds.items():
        own = regression_metrics(p_["true"][:, 0], p_["pred"][:, 0])
        keep = np.isin(np.round(p_["time"], 6), common)
        same = regression_metrics(p_["true"][keep, 0], p_["pred"][keep, 0])
        print(json.dumps({"run": run, "streamable": streamable, "target": p_["names"][0],
                          "windows": int(len(p_["time"])), "rmse": round(own["rmse"], 5),
                          "r2": round(own["r2"], 4), "common_windows": int(keep.sum()),
                          "common_rmse": round(same["rmse"], 5),
                          "common_r2": round(same["r2"], 4)}), flush=True)


if __name__ == "__main__":
    main()
