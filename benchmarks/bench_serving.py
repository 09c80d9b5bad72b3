"""Serving under load: in-process SavedModel, then ``labquake serve`` over REST and gRPC
with 1/8/64/256 concurrent clients, batching off and on, and the first request after a
version loads with and without warmup.

    python benchmarks/bench_serving.py --preset small --seq-len 64 --rounds 3

One 64-step window per request (and one 256-window cell, where the encodings differ).
The server runs as its own process (``labquake serve``, as a user starts it); the clients
run in another process, as threads, with no retries, so every refused or reset connection
counts as a failure, and every answer is checked against the SavedModel's own. The model is untrained (weights do not change the cost); the export
is the one ``labquake export`` writes (scaler baked in, warmup records included).

Targets on 2 CPU cores: 0 failures at 256 clients; with batching, 64-client throughput
>= 3x unbatched (same run); gRPC p50 < REST p50 at 1 client; the first request after a
warmed-up load within 2x the steady p50.
"""

import argparse
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
TARGETS = ["shear_stress", "ttsf", "ttef"]
# TF Serving's recipe for CPU-only servers (batching/README.md, "CPU-only: One Approach"):
# num_batch_threads = cores, batch_timeout_micros 0 (a batch is whatever queued while the
# last one ran; a timeout only adds waiting at low load), a large max_batch_size (64: the
# most windows that can be queued here). No allowed_batch_sizes: padding buys fixed shapes
# (TPU, XLA) and costs a CPU compute (measured: 64 clients ~15% slower with 8/16/32/64).
BATCHING = f"""max_batch_size {{ value: 64 }}
batch_timeout_micros {{ value: 0 }}
num_batch_threads {{ value: {os.cpu_count() or 1} }}
max_enqueued_batches {{ value: 100 }}
"""

def manifest(seq_len):
    from labquake_tf.data.scaling import MinMaxScaler

    features = MinMaxScaler().fit(np.array([[-2.0], [3.0]]), names=["logvar_ch1"])
    targets = MinMaxScaler().fit(np.array([[1.0, 0.0, 0.0], [5.0, 10.0, 12.0]]), names=TARGETS)
    return {"dataset": "benchmark", "feature_names": ["logvar_ch1"], "target_names": TARGETS,
            "dt": 0.01, "seq_len": seq_len,
            "scaler": {"features": features.to_dict(), "targets": targets.to_dict()}}


def summary(times_ms, wall=None):
    times_ms = np.asarray(times_ms)
    if not len(times_ms):
        return {"p50_ms": None, "p99_ms": None, "req_per_s": 0.0}
    rate = len(times_ms) / (wall if wall else times_ms.sum() / 1e3)
    return {"p50_ms": round(float(np.percentile(times_ms, 50)), 2),
            "p99_ms": round(float(np.percentile(times_ms, 99)), 2), "req_per_s": round(rate, 1)}


# ----------------------------------------------------------------- load generator process
class _RawREST:
    """The least a REST client can do: a prepared request, a socket, the reply parsed just
    enough to check it; the cost measured is the server's, not a Python client's."""

    def __init__(self, url, model, windows, keepalive):
        import urllib.parse

        u = urllib.parse.urlsplit(url)
        self.address, self.keepalive, self.sock = (u.hostname, u.port), keepalive, None
        close = "" if keepalive else "Connection: close\r\n"
        self.requests = []
        for w in windows:
            body = json.dumps({"instances": w.tolist()}).encode()
            self.requests.append(
                f"POST /v1/models/{model}:predict HTTP/1.1\r\nHost: {u.netloc}\r\n{close}"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                .encode() + body)

    def __call__(self, k):
        import socket

        if self.sock is None:
            self.sock = socket.create_connection(self.address, timeout=60)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.sendall(self.requests[k])
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("the server closed the connection")
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        size = int(re.search(rb"Content-Length: (\d+)", head)[1])
        while len(body) < size:
            body += self.sock.recv(65536)
        if not self.keepalive:
            self.sock.close()
            self.sock = None
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(head.split(b"\r\n")[0].decode() + " " + body[:200].decode())
        return [[row[t] for t in TARGETS] for row in json.loads(body)["predictions"]]


class _RawGRPC:
    """TF Serving's own stub with prepared PredictRequests."""

    def __init__(self, url, model, windows, channel):
        from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

        from labquake_tf.serving.tensors import to_tensor_proto

        self.stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        self.requests = []
        for w in windows:
            r = predict_pb2.PredictRequest()
            r.model_spec.name = model
            r.inputs["ae_features"].CopyFrom(to_tensor_proto(w))
            self.requests.append(r)

    def __call__(self, k):
        out = self.stub.Predict(self.requests[k], timeout=60).outputs
        return np.stack([np.frombuffer(out[t].tensor_content, np.float32) for t in TARGETS], 1)


def load(spec):
    """Runs in its own process: ``clients`` threads, each sending ``per_client`` requests."""
    data = np.load(spec["data"])
    rows = spec.get("rows", 1)  # windows per request
    tiled = np.tile(data["windows"], (rows // len(data["windows"]) + 2, 1, 1))
    tiled_expected = np.tile(data["expected"], (rows // len(data["windows"]) + 2, 1))
    windows = [tiled[k:k + rows] for k in range(len(data["windows"]))]
    expected = [tiled_expected[k:k + rows] for k in range(len(data["windows"]))]
    channel = None
    if spec["url"].startswith("grpc://"):
        import grpc

        channel = grpc.insecure_channel(spec["url"][len("grpc://"):])
    times, failures, wrong, errors = [], [0], [0], []
    lock = threading.Lock()
    start = threading.Barrier(spec["clients"] + 1)

    def worker(i):
        mine, answers = [], []
        call = _RawGRPC(spec["url"], spec["model"], windows, channel) if channel else \
            _RawREST(spec["url"], spec["model"], windows, spec["keepalive"])
        start.wait()
        for j in range(spec["per_client"]):
            k = (i * 7 + j) % len(windows)
            t0 = time.perf_counter()
            try:
                answers.append((k, call(k)))
                mine.append((time.perf_counter() - t0) * 1e3)
            except Exception as e:  # counted: the point is that there are none
                if getattr(call, "sock", None) is not None:
                    call.sock.close()
                    call.sock = None
                with lock:
                    failures[0] += 1
                    if len(errors) < 3:
                        errors.append(repr(e)[:200])
        with lock:
            times.extend(mine)
            outputs.extend(answers)
    outputs = []
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(spec["clients"])]
    for t in threads:
        t.start()
    start.wait()
    t0, cpu0 = time.perf_counter(), time.process_time()
    for t in threads:
        t.join()
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    # Checked once the clock has stopped: the server shares the cores with this process,
    # and np.allclose per answer would cost it more than parsing the answer does.
    wrong[0] = sum(not np.allclose(out, expected[k], rtol=1e-5, atol=1e-5)
                   for k, out in outputs)
    return {**summary(times, wall), "n": len(times) + failures[0], "failures": failures[0],
            "wrong": wrong[0], "errors": errors,
            "client_cpu_ms": round(cpu * 1e3 / max(len(times), 1), 3)}


def run_load(url, model, data, clients, per_client, keepalive=True, rows=1):
    spec = {"url": url, "model": model, "data": str(data), "clients": clients,
            "per_client": per_client, "keepalive": keepalive, "rows": rows}
    out = subprocess.run([sys.executable, __file__, "--load", json.dumps(spec)],
                         capture_output=True, text=True, env=_env(), timeout=900)
    if out.returncode:
        raise RuntimeError(f"load generator failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------- server process
def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
    return env


class ServeProcess:
    """``labquake serve`` on free ports; ``rest``/``grpc`` are the URLs it printed."""

    def __init__(self, base, *flags, tf_threads=0):
        self.log = tempfile.NamedTemporaryFile("w+", suffix=".log")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "labquake_tf.cli", "serve", "--model_base_path", str(base),
             "--port", "0", "--rest_api_port", "0", "--tf-threads", str(tf_threads), *flags],
            stdout=subprocess.PIPE, stderr=self.log, text=True, env=_env())
        line = self.proc.stdout.readline()  # printed once every version is AVAILABLE
        m = re.search(r"REST at (http://\S+?)/v1/.*gRPC at (\S+?),?(\s|$)", line)
        if not m:
            self.close()
            self.log.seek(0)
            raise RuntimeError(f"labquake serve did not start: {line!r} {self.log.read()[-2000:]}")
        self.ready = time.perf_counter()
        self.rest, self.grpc = m[1], f"grpc://{m[2]}"

    def close(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def first_request(base, data, warmup, repeats, steady):
    """Latency of the first request once the server says the version is AVAILABLE, and
    the p50 of the ``steady`` requests after it, on a fresh server each time; for
    reference, the p50 on a new connection each, and on a new connection after the
    server idled 50 ms (as it has when the first request comes)."""
    from labquake_tf.serving import Client

    windows = np.load(data)["windows"]
    firsts, p50s, fresh, idle = [], [], [], []
    for _ in range(repeats):
        server = ServeProcess(base, "--enable_model_warmup", str(warmup).lower())
        try:
            client = Client(server.rest, "bench", timeout=60, retries=0)
            t0 = time.perf_counter()
            client.predict(windows[:1])
            firsts.append((time.perf_counter() - t0) * 1e3)
            times = []
            for i in range(steady):
                t0 = time.perf_counter()
                client.predict(windows[i % len(windows):][:1])
                times.append((time.perf_counter() - t0) * 1e3)
            p50s.append(float(np.percentile(times, 50)))
            times = []
            for i in range(50):  # what the first request cannot avoid: a new connection
                client.close()
                t0 = time.perf_counter()
                client.predict(windows[i % len(windows):][:1])
                times.append((time.perf_counter() - t0) * 1e3)
            fresh.append(float(np.percentile(times, 50)))
            times = []
            for i in range(20):  # and what it comes after: a server idle since start-up
                client.close()
                time.sleep(0.05)
                t0 = time.perf_counter()
                client.predict(windows[i % len(windows):][:1])
                times.append((time.perf_counter() - t0) * 1e3)
            idle.append(float(np.percentile(times, 50)))
        finally:
            server.close()
    return {"warmup": warmup, "first_ms": [round(f, 1) for f in firsts],
            "steady_p50_ms": round(float(np.median(p50s)), 2),
            "new_connection_p50_ms": round(float(np.median(fresh)), 2),
            "first_over_p50": round(float(np.median(firsts) / np.median(p50s)), 1),
            "first_over_new_connection_p50": round(float(np.median(firsts) / np.median(fresh)),
                                                   1),
            "after_idle_p50_ms": round(float(np.median(idle)), 2),
            "first_over_after_idle_p50": round(float(np.median(firsts) / np.median(idle)), 1)}


def overhead_floor(tmp, windows, apis, rounds, requests):
    """1-client p50 per API with a model that costs next to nothing (one slice of the
    input per output): what serving adds to a model call, server and client together."""
    import tensorflow as tf

    class Floor(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, *windows.shape[1:]], tf.float32)])
        def serve(self, ae_features):
            return {t: ae_features[:, 0, 0] for t in TARGETS}

    module = Floor()
    tf.saved_model.save(module, str(tmp / "floor" / "1"),
                        signatures={"serving_default": module.serve})
    np.savez(tmp / "floor.npz", windows=windows,
             expected=np.stack([windows[:, 0, 0]] * len(TARGETS), axis=1))
    server = ServeProcess(tmp / "floor")
    try:
        out = {}
        for _ in range(rounds):
            for api in apis:
                url = server.rest if api == "rest" else server.grpc
                out.setdefault(api, []).append(run_load(url, "floor", tmp / "floor.npz", 1,
                                                        requests))
    finally:
        server.close()
    return {api: {"p50_ms": float(np.median([d["p50_ms"] for d in done])),
                  "client_cpu_ms": float(np.median([d["client_cpu_ms"] for d in done])),
                  "failures": sum(d["failures"] + d["wrong"] for d in done)}
            for api, done in out.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small", help="TCN preset (models.PRESETS)")
    parser.add_argument("--seq-len", type=int, default=64, help="window length")
    parser.add_argument("--clients", default="1,8,64,256", help="concurrent clients to try")
    parser.add_argument("--requests", type=int, default=1024,
                        help="requests per cell (at least 2 per client)")
    parser.add_argument("--apis", default="rest,grpc")
    parser.add_argument("--rounds", type=int, default=3,
                        help="each cell this often, off and on interleaved; medians reported")
    parser.add_argument("--first-repeats", type=int, default=3,
                        help="fresh servers per warmup setting for the first-request figure")
    parser.add_argument("--tf-threads", type=int, default=0,
                        help="TF intra/inter-op threads in the server (0: TF's default)")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--load", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.load:  # the load generator subprocess
        print(json.dumps(load(json.loads(args.load))))
        return 0

    import tensorflow as tf

    from labquake_tf.models import build_from_preset
    from labquake_tf.serving.export import export_model
    from labquake_tf.task import LabquakeRegressor

    model = build_from_preset(args.preset, seq_len=args.seq_len, n_targets=3)
    windows = np.random.default_rng(0).uniform(-2, 3, (32, args.seq_len, 1)).astype("float32")
    clients = [int(c) for c in args.clients.split(",") if c]  # "": first request only
    results = {"preset": args.preset, "seq_len": args.seq_len, "params": model.count_params(),
               "cpus": os.cpu_count(), "load_before": os.getloadavg()[0], "cells": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        task = LabquakeRegressor.from_manifest(model, manifest(args.seq_len))
        path = export_model(task, "bench", base_dir=tmp)
        fn = tf.saved_model.load(str(path)).signatures["serving_default"]
        out = fn(ae_features=tf.constant(windows))
        expected = np.stack([out[t].numpy() for t in TARGETS], axis=1)
        np.savez(tmp / "data.npz", windows=windows, expected=expected)
        times = []
        for i in range(300):
            t0 = time.perf_counter()
            fn(ae_features=tf.constant(windows[i % 32:][:1]))
            times.append((time.perf_counter() - t0) * 1e3)
        results["in_process"] = summary(times[50:])
        (tmp / "batching.txt").write_text(BATCHING)

        if clients:
            # Both servers up at once, each cell run on one then the other, ``--rounds`` times:
            # on a shared machine the load drifts, and a ratio needs both sides under the same.
            servers = {False: ServeProcess(path.parent, tf_threads=args.tf_threads),
                       True: ServeProcess(path.parent, "--batching_parameters_file",
                                          str(tmp / "batching.txt"), tf_threads=args.tf_threads)}
            try:
                cells = [(api, c, True, 1) for api in args.apis.split(",") for c in clients]
                cells += [("rest", c, False, 1) for c in clients if c >= 64]  # new conn. each
                # Where the encodings differ: 256 windows per request (no batching to do).
                cells += [(api, 1, True, 256) for api in args.apis.split(",")]
                for api, c, keepalive, rows in cells:
                    per_client = max(2 if rows == 1 else 20, -(-args.requests // c // rows))
                    runs = {False: [], True: []}
                    for _ in range(args.rounds):
                        for batching in (False, True) if rows == 1 else (False,):
                            server = servers[batching]
                            url = server.rest if api == "rest" else server.grpc
                            runs[batching].append(run_load(url, "bench", tmp / "data.npz", c,
                                                           per_client, keepalive, rows))
                    for batching, done in runs.items():
                        if not done:
                            continue
                        cell = {k: float(np.median([d[k] for d in done]))
                                for k in ("req_per_s", "p50_ms", "p99_ms", "client_cpu_ms")}
                        cell.update({k: sum(d[k] for d in done)
                                     for k in ("n", "failures", "wrong")},
                                    errors=[e for d in done for e in d["errors"]][:3],
                                    api=api + ("" if keepalive else " (new conn.)") +
                                    (f" x{rows} windows" if rows > 1 else ""),
                                    clients=c, batching=batching, rows=rows, rounds=len(done))
                        results["cells"].append(cell)
                        mode = "on " if batching else "off"
                        print(f"{cell['api']:<18}{c:>5} clients  batching={mode}"
                              f"  {cell['req_per_s']:>7.0f} req/s  p50 {cell['p50_ms']:>7.2f} ms  "
                              f"p99 {cell['p99_ms']:>7.2f} ms  "
                              f"failures {cell['failures']}/{cell['n']}"
                              f"  wrong {cell['wrong']}  client CPU "
                              f"{cell['client_cpu_ms']:.3f} ms/req", flush=True)
            finally:
                for server in servers.values():
                    server.close()
            results["floor"] = overhead_floor(tmp, windows, args.apis.split(","), args.rounds,
                                              args.requests)
        results["first_request"] = [first_request(path.parent, tmp / "data.npz", w,
                                                  args.first_repeats, 200) for w in (False, True)]
    results["load_after"] = os.getloadavg()[0]

    def cell(api, c, batching):
        return next((r for r in results["cells"] if r["api"] == api and r["clients"] == c
                     and r["batching"] == batching), None)
    print(f"\npreset={args.preset} seq_len={args.seq_len} params={results['params']:,} "
          f"cpus={results['cpus']} load average {results['load_before']:.1f} -> "
          f"{results['load_after']:.1f}")
    print(f"in-process SavedModel: p50 {results['in_process']['p50_ms']} ms, "
          f"p99 {results['in_process']['p99_ms']} ms")
    for f in results["first_request"]:
        print(f"first request, warmup {'on ' if f['warmup'] else 'off'}: {f['first_ms']} ms "
              f"(steady p50 {f['steady_p50_ms']} ms: {f['first_over_p50']}x; on a new "
              f"connection each {f['new_connection_p50_ms']} ms: "
              f"{f['first_over_new_connection_p50']}x; new connection after 50 ms idle "
              f"{f['after_idle_p50_ms']} ms: {f['first_over_after_idle_p50']}x)")
    worst = max((r["failures"] + r["wrong"] for r in results["cells"]), default=0)
    print(f"failures + wrong answers, worst cell: {worst}")
    on, off = cell("rest", 64, True), cell("rest", 64, False)
    if on and off:
        print(f"REST 64 clients, batching on/off: {on['req_per_s'] / off['req_per_s']:.1f}x")
    on, off = cell("grpc", 64, True), cell("grpc", 64, False)
    if on and off:
        print(f"gRPC 64 clients, batching on/off: {on['req_per_s'] / off['req_per_s']:.1f}x")
    for api, f in results.get("floor", {}).items():
        print(f"{api} 1 client, a model that costs nothing: p50 {f['p50_ms']} ms (client CPU "
              f"{f['client_cpu_ms']} ms/req, failures {f['failures']})")
    for suffix in ("", " x256 windows"):
        rest, grpc_ = cell("rest" + suffix, 1, False), cell("grpc" + suffix, 1, False)
        if rest and grpc_:
            print(f"1 client{suffix} p50: gRPC {grpc_['p50_ms']} ms, REST {rest['p50_ms']} ms")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
