"""Latency and throughput for one window: in-process SavedModel and REST (embedded server).

    python benchmarks/bench_serving.py --preset small --requests 1000

Targets on 2 CPU cores: p99 <= 5 ms in-process, <= 20 ms over REST. The model is
untrained (weights do not change the cost); the export is the one ``labquake export``
writes, so the graph includes the baked-in scaler.
"""

import argparse
import json
import os
import tempfile
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from labquake_tf.data.scaling import MinMaxScaler  # noqa: E402
from labquake_tf.models import build_from_preset  # noqa: E402
from labquake_tf.serving import Client  # noqa: E402
from labquake_tf.serving.export import export_model  # noqa: E402
from labquake_tf.serving.server import Server, set_tf_threads  # noqa: E402

TARGETS = ["shear_stress", "ttsf", "ttef"]


def manifest(seq_len):
    features = MinMaxScaler().fit(np.array([[-2.0], [3.0]]), names=["logvar_ch1"])
    targets = MinMaxScaler().fit(np.array([[1.0, 0.0, 0.0], [5.0, 10.0, 12.0]]), names=TARGETS)
    return {"dataset": "benchmark", "feature_names": ["logvar_ch1"], "target_names": TARGETS,
            "dt": 0.01, "seq_len": seq_len,
            "scaler": {"features": features.to_dict(), "targets": targets.to_dict()}}


def timed(call, requests, warmup):
    for _ in range(warmup):
        call()
    times = np.empty(requests)
    for i in range(requests):
        t0 = time.perf_counter()
        call()
        times[i] = time.perf_counter() - t0
    return times


def summary(name, times, wall=None):
    ms = times * 1e3
    rate = len(times) / (wall if wall else times.sum())
    return {"path": name, "p50_ms": round(float(np.percentile(ms, 50)), 3),
            "p99_ms": round(float(np.percentile(ms, 99)), 3), "throughput_per_s": round(rate, 1),
            "n": len(times)}


def concurrent(client, window, threads, per_thread):
    times = [None] * threads

    def worker(i):
        times[i] = timed(lambda: client.predict(window), per_thread, 5)

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    t0 = time.perf_counter()
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return np.concatenate(times), time.perf_counter() - t0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small", help="TCN preset (models.PRESETS)")
    parser.add_argument("--seq-len", type=int, default=70, help="window length (paper: 70)")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--threads", type=int, default=4, help="REST clients for throughput")
    parser.add_argument("--tf-threads", type=int, default=0,
                        help="TF intra/inter-op threads (0: TF's default, one per core)")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    set_tf_threads(args.tf_threads)

    model = build_from_preset(args.preset, seq_len=args.seq_len, n_targets=3)
    window = np.random.default_rng(0).uniform(-2, 3, (1, args.seq_len, 1)).astype("float32")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        path = export_model(model, manifest(args.seq_len), "bench", base_dir=tmp)
        fn = tf.saved_model.load(str(path)).signatures["serving_default"]
        results.append(summary("in-process SavedModel",
                               timed(lambda: fn(ae_features=tf.constant(window)),
                                     args.requests, args.warmup)))
        with Server(path.parent, port=0) as server:
            client = Client(server.url, "bench")
            results.append(summary("REST, 1 client", timed(lambda: client.predict(window),
                                                           args.requests, args.warmup)))
            times, wall = concurrent(client, window, args.threads,
                                     max(args.requests // args.threads, 1))
            results.append(summary(f"REST, {args.threads} clients", times, wall))
    print(f"preset={args.preset} seq_len={args.seq_len} params={model.count_params():,} "
          f"tf_threads={args.tf_threads} cpus={os.cpu_count()} "
          f"load average={os.getloadavg()[0]:.1f}")
    print(f"{'path':<24}{'p50 ms':>9}{'p99 ms':>9}{'req/s':>9}")
    for r in results:
        print(f"{r['path']:<24}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}{r['throughput_per_s']:>9.0f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"preset": args.preset, "seq_len": args.seq_len, "results": results}, f,
                      indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
