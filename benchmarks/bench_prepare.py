"""``labquake prepare`` locally vs on Apache Beam (DirectRunner, 1 and 2 worker processes).

    python benchmarks/bench_prepare.py --gb 2 --records 4      # needs pip install -e ".[beam]"

Writes ``--records`` synthetic raw records totalling ``--gb`` GB (HDF5 in the layout of
CONTRIBUTING.md: int16 ``/ae`` at ``--rate`` Hz, a stick-slip ``/mech/shear_stress`` at
1 kHz) into ``--folder``, then prepares all of them three ways, each a separate
``labquake prepare`` process: local (one record after another), Beam with 1 worker and
Beam with 2 workers (``--direct_running_mode=multi_processing``). A thread samples the
resident memory of every process of the run's tree (``/proc``) every 0.2 s. Reported per
run: wall time, raw samples/s, peak RSS of the driver and of each worker process, and
whether the shards equal the local run's (manifest and shard sha256s). Then the paper
estimate for ``--cluster-nodes`` nodes of ``--cores`` workers on ``--cluster-tb`` TB of
int16 AE, from the measured per-worker rate. Prints one JSON line.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time

import numpy as np


def write_record(path, n_samples, rate, seed, chunk=1 << 24):
    """Raw int16 AE louder as stress builds, a 20 s stick-slip sawtooth; written in chunks."""
    import h5py

    rng = np.random.default_rng(seed)
    mech_rate = 1000.0
    duration = n_samples / rate
    t = np.arange(int(duration * mech_rate)) / mech_rate
    stress = 5.0 + 0.02 * ((t + 3.0 * seed) % 20.0)
    with h5py.File(path, "w") as f:
        f.attrs.update(format="labquake-hdf5", version=1, name=os.path.basename(path)[:-3])
        ae = f.create_dataset("ae", (n_samples, 1), np.int16, chunks=(1 << 18, 1))
        ae.attrs.update(sample_rate=rate, t0=0.0)
        for s0 in range(0, n_samples, chunk):
            s1 = min(s0 + chunk, n_samples)
            amp = 20 + 200 * np.interp(np.arange(s0, s1) / rate, t, stress - 5.0)
            ae[s0:s1, 0] = (rng.standard_normal(s1 - s0).astype(np.float32) * amp).astype(np.int16)
        ds = f.create_dataset("mech/shear_stress", data=stress)
        ds.attrs.update(sample_rate=mech_rate, t0=0.0, units="MPa")


def tree_rss(root):
    """``{pid: (name, rss_bytes)}`` of ``root`` and its descendants."""
    children, info = {}, {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{pid}/status") as f:
                rss = next((int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS")),
                           0)
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(pid))
        info[int(pid)] = (cmd, rss)
    out, todo = {}, [root]
    while todo:
        pid = todo.pop()
        if pid in info:
            out[pid] = info[pid]
        todo += children.get(pid, [])
    return out


def timed(cmd, env):
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peaks, done = {}, threading.Event()

    def sample():
        while not done.is_set():
            for pid, (name, rss) in tree_rss(proc.pid).items():
                peaks[pid] = (name, max(rss, peaks.get(pid, ("", 0))[1]))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    t0 = time.perf_counter()
    sampler.start()
    _, err = proc.communicate()
    elapsed = time.perf_counter() - t0
    done.set()
    sampler.join()
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{err.decode()[-3000:]}")
    driver = peaks.pop(proc.pid, ("", 0))[1]
    # Beam's worker processes (python -m ...sdk_worker_main; the shells that start them
    # hold a few MB and are left out)
    workers = sorted(rss for name, rss in peaks.values() if rss > 50 * 2 ** 20)
    return elapsed, driver, workers


def same_output(a, b):
    ma, mb = (json.load(open(os.path.join(d, "manifest.json"))) for d in (a, b))
    return ma["splits"] == mb["splits"] and ma["scaler"] == mb["scaler"]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--gb", type=float, default=2.0, help="raw AE in all records (GB)")
    p.add_argument("--records", type=int, default=4)
    p.add_argument("--rate", type=float, default=1e6, help="AE sample rate (Hz)")
    p.add_argument("--folder", default="/tmp/labquake-bench-prepare")
    p.add_argument("--workers", default="1,2")
    p.add_argument("--cluster-nodes", type=int, default=16)
    p.add_argument("--cores", type=int, default=16, help="Beam workers per cluster node")
    p.add_argument("--cluster-tb", type=float, default=1.0)
    p.add_argument("--keep", action="store_true", help="keep the records and outputs")
    args = p.parse_args()

    os.makedirs(args.folder, exist_ok=True)
    n = int(args.gb * 1e9 / 2 / args.records)
    paths = []
    for i in range(args.records):
        path = os.path.join(args.folder, f"rec{i}-{args.rate:g}hz-{n}.h5")
        if not os.path.exists(path) or os.path.getsize(path) < 2 * n:
            write_record(path, n, args.rate, seed=i)
        paths.append(path)
    total = n * args.records
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    labquake = [sys.executable, "-m", "labquake_tf.cli"]
    results = {}
    runs = [("local", None)] + [(f"beam_{w}", int(w)) for w in args.workers.split(",")]
    for name, workers in runs:
        out = os.path.join(args.folder, f"out-{name}")
        shutil.rmtree(out, ignore_errors=True)
        if workers is None:  # the local prepare, one record after another, one process
            code = ("import os, sys; from labquake_tf.data.prepare import prepare\n"
                    "for p in sys.argv[2:]:"
                    "    prepare(p, os.path.join(sys.argv[1], os.path.basename(p)[:-3]))")
            cmd = [sys.executable, "-c", code, out, *paths]
        else:
            cmd = [*labquake, "prepare", "--runner", "beam", "--dataset", ",".join(paths),
                   "--out", out, f"--direct_num_workers={workers}",
                   "--direct_running_mode=multi_processing"]
        elapsed, driver, worker_rss = timed(cmd, env)
        results[name] = {"seconds": round(elapsed, 1), "samples_per_s": round(total / elapsed),
                         "peak_rss_driver_mb": round(driver / 2 ** 20),
                         "peak_rss_workers_mb": [round(r / 2 ** 20) for r in worker_rss]}
        if name != "local":
            stems = [os.path.basename(q)[:-3] for q in paths]
            results[name]["same_as_local"] = all(
                same_output(os.path.join(args.folder, "out-local", s), os.path.join(out, s))
                for s in stems)
    per_worker = results.get("beam_1", {}).get("samples_per_s")
    estimate = None
    if per_worker:
        samples = args.cluster_tb * 1e12 / 2
        workers = args.cluster_nodes * args.cores
        estimate = {"tb": args.cluster_tb, "nodes": args.cluster_nodes,
                    "workers": workers, "per_worker_samples_per_s": per_worker,
                    "hours_if_linear": round(samples / (per_worker * workers) / 3600, 2)}
    print(json.dumps({"gb": args.gb, "records": args.records, "samples": total,
                      "rate_hz": args.rate, "cpus": os.cpu_count(),
                      "load_avg_before": os.getloadavg(), "runs": results,
                      "cluster_estimate": estimate}))
    if not args.keep:
        shutil.rmtree(args.folder, ignore_errors=True)


if __name__ == "__main__":
    main()
