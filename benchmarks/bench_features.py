"""AE log-variance throughput: streaming hop-block sums vs a naive per-window ``np.var`` loop.

Prints one JSON line. The record is synthetic int16 at 2 MHz, streamed in chunks
(one random chunk fed repeatedly, so generating data is not timed), with the
paper's 0.1 s window and 0.01 s hop. Figures depend on machine load.

    python benchmarks/bench_features.py [--samples 200e6] [--workers 2]
"""

import argparse
import json
import os
import time

import numpy as np

from labquake_tf.data.features import LogVariance

RATE, WINDOW, HOP = 2_000_000, 0.1, 0.01


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=float, default=200e6, help="record length in samples")
    p.add_argument("--chunk", type=float, default=20e6, help="samples per streamed chunk")
    p.add_argument("--workers", type=int, default=os.cpu_count())
    p.add_argument("--naive-seconds", type=float, default=2.0, help="slice for the naive loop (s)")
    args = p.parse_args(argv)

    rng = np.random.default_rng(0)
    chunk = rng.normal(0, 2000, (int(args.chunk), 1)).astype(np.int16)
    n_chunks = max(1, int(args.samples // len(chunk)))
    lv = LogVariance(RATE, WINDOW, HOP, workers=args.workers)
    start = time.perf_counter()
    n_windows = sum(len(lv.update(chunk)) for _ in range(n_chunks))
    fast_s = time.perf_counter() - start
    fast = n_chunks * len(chunk) / fast_s

    piece = chunk[:int(args.naive_seconds * RATE), 0]
    w, h = int(WINDOW * RATE), int(HOP * RATE)
    start = time.perf_counter()
    naive_out = [np.log10(np.var(piece[k:k + w])) for k in range(0, len(piece) - w + 1, h)]
    naive = len(piece) / (time.perf_counter() - start)

    ref = LogVariance(RATE, WINDOW, HOP, workers=1).update(piece)[:, 0]
    print(json.dumps({
        "samples": n_chunks * len(chunk), "windows": n_windows, "workers": args.workers,
        "cpu_count": os.cpu_count(), "seconds": round(fast_s, 3),
        "samples_per_s": round(fast), "naive_samples_per_s": round(naive),
        "speedup": round(fast / naive, 1),
        "max_abs_diff_vs_naive": float(np.abs(ref - np.array(naive_out)).max()),
        "load_avg_1min": os.getloadavg()[0]}))


if __name__ == "__main__":
    main()
