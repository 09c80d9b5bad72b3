"""Streaming inference: incremental engine vs windowed recompute, per hop, in one run.

    python benchmarks/bench_stream.py                   # small and paper, one JSON line each
    python benchmarks/bench_stream.py --preset paper    # incremental_speedup, realtime_factor

Random weights (the cost does not depend on training). Per preset (the streamable
variant ``PRESET-stream``):

* per-hop latency p50/p99 of the incremental engine (one feature step per push, as
  a live 100 Hz stream delivers them) and of windowed recompute (one window per hop,
  the model on its whole ``seq_len + receptive_field - 1`` steps);
  ``incremental_speedup`` = windowed p50 / incremental p50;
* ``realtime_factor`` = incremental p50 per hop / 10 ms (below 1 keeps up at 100 Hz);
* throughput (steps/s) of both with 0.1 s chunks (10 hops per push, batched);
* raw AE -> prediction: ``Streamer.update`` on 2 MHz int16 AE in 10 ms chunks,
  samples/s including the log-variance;
* for reference, the non-streamable model's windowed hop (its window is seq_len only).

The incremental engine's warm-up (input_len steps before the first window) is
skipped by setting its step counter: the per-step work is the same either way.
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import numpy as np  # noqa: E402

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _times(fn, n, warmup=2):
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return np.asarray(out)


def bench(preset, hops, window_hops, raw_seconds, seed=0):
    import keras

    from labquake_tf.models import build_from_preset
    from labquake_tf.streaming import IncrementalEngine, Streamer, WindowedEngine
    from labquake_tf.task import LabquakeRegressor

    keras.utils.set_random_seed(seed)
    model = build_from_preset(f"{preset}-stream")
    reference = build_from_preset(preset)
    rng = np.random.default_rng(seed)
    length = int(model.input_shape[1])
    result = {"preset": preset, "input_len": length, "seq_len": int(reference.input_shape[1]),
              "params": int(model.count_params()), "cpus": os.cpu_count(),
              "load_avg_1min": os.getloadavg()[0]}

    inc = IncrementalEngine(model)
    inc.n_steps = length  # skip the warm-up: every push below ends a window
    steps = rng.normal(size=(hops + 12, 1)).astype("float32")
    it = iter(range(len(steps)))
    t_inc = _times(lambda: inc.push(steps[next(it):][:1]), hops)
    result["incremental_hop_ms_p50"] = float(np.percentile(t_inc, 50) * 1e3)
    result["incremental_hop_ms_p99"] = float(np.percentile(t_inc, 99) * 1e3)
    chunk = rng.normal(size=(10, 1)).astype("float32")
    t_chunk = _times(lambda: inc.push(chunk), max(3, hops // 10))
    result["incremental_steps_per_s"] = float(10 / np.median(t_chunk))

    win = WindowedEngine(model, batch_size=16)
    win.push(rng.normal(size=(length - 1, 1)).astype("float32"))
    one = rng.normal(size=(1, 1)).astype("float32")
    t_win = _times(lambda: win.push(one), window_hops, warmup=1)
    result["windowed_hop_ms_p50"] = float(np.percentile(t_win, 50) * 1e3)
    result["windowed_hop_ms_p99"] = float(np.percentile(t_win, 99) * 1e3)
    if window_hops >= 3:
        t_wchunk = _times(lambda: win.push(chunk), max(1, window_hops // 10), warmup=1)
        result["windowed_steps_per_s"] = float(10 / np.median(t_wchunk))
    ref = WindowedEngine(reference, batch_size=16)
    ref.push(rng.normal(size=(int(reference.input_shape[1]) - 1, 1)).astype("float32"))
    t_ref = _times(lambda: ref.push(one), max(3, window_hops), warmup=1)
    result["reference_windowed_hop_ms_p50"] = float(np.percentile(t_ref, 50) * 1e3)

    result["incremental_speedup"] = result["windowed_hop_ms_p50"] / result["incremental_hop_ms_p50"]
    result["realtime_factor"] = result["incremental_hop_ms_p50"] / 10.0
    result["realtime_factor_p99"] = result["incremental_hop_ms_p99"] / 10.0
    # The same 100 Hz stream delivered in 0.1 s chunks: weights are read once per chunk.
    result["realtime_factor_chunk10"] = 100.0 / result["incremental_steps_per_s"]

    # Raw AE at 2 MHz through the whole Streamer (log-variance + scaling + engine).
    rate = 2e6
    manifest = {"feature_names": ["logvar_ch1"], "target_names": ["shear_stress"], "dt": 0.01,
                "scaler": {"features": {"min": [0.0], "max": [4.0]},
                           "targets": {"min": [0.0], "max": [1.0]}}}
    streamer = Streamer(LabquakeRegressor.from_manifest(model, manifest), sample_rate=rate)
    streamer.engine.n_steps = length
    ae = (rng.normal(size=(int(rate * raw_seconds), 1)) * 100).astype(np.int16)
    per = int(rate * 0.01)
    streamer.update(ae[:int(rate * 0.1)])  # fill the log-variance window
    t = time.perf_counter()
    for i in range(0, len(ae), per):
        streamer.update(ae[i:i + per])
    result["raw_samples_per_s"] = float(len(ae) / (time.perf_counter() - t))
    result["raw_realtime_factor"] = rate / result["raw_samples_per_s"]
    return result


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="small,paper",
                   help="comma-separated: small, paper, tiny, ...")
    p.add_argument("--hops", type=int, default=300, help="incremental hops timed")
    p.add_argument("--window-hops", default="small=30,paper=2",
                   help="windowed hops timed per preset (paper size: seconds per hop)")
    p.add_argument("--raw-seconds", type=float, default=2.0, help="stream seconds of 2 MHz raw AE")
    args = p.parse_args(argv)
    window_hops = dict(kv.split("=") for kv in args.window_hops.split(",") if kv)
    for preset in args.preset.split(","):
        r = bench(preset, args.hops, int(window_hops.get(preset, 10)), args.raw_seconds)
        print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}),
              flush=True)


if __name__ == "__main__":
    main()
