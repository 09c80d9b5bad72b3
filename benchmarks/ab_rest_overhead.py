"""REST overhead of two source trees side by side: each tree's ``labquake serve`` up at once,
one client alternating blocks of 50 keep-alive requests between them (the first two blocks
not timed), p50 and p90 of each; a model that costs nothing, then the small preset.

    git archive OLD_COMMIT | tar -x -C /tmp/old
    python benchmarks/ab_rest_overhead.py /tmp/old .

Interleaving puts both under the same machine load, which sequential runs of
``bench_serving.py`` on a shared machine do not.
"""
import json
import os
import pathlib
import re
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import tensorflow as tf  # noqa: E402

from bench_serving import TARGETS, manifest  # noqa: E402

from labquake_tf.models import build_from_preset  # noqa: E402
from labquake_tf.serving.export import export_model  # noqa: E402
from labquake_tf.task import LabquakeRegressor  # noqa: E402

ROOTS = {"old": str(pathlib.Path(sys.argv[1]).resolve()),
         "new": str(pathlib.Path(sys.argv[2] if len(sys.argv) > 2 else ".").resolve())}

def serve(root, base, flags=()):
    path = [root] + [p for p in [os.environ.get("PYTHONPATH")] if p]  # deps outside the venv
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(path))
    p = subprocess.Popen([sys.executable, "-m", "labquake_tf.cli", "serve", "--model_base_path",
                          str(base), "--port", "-1", "--rest_api_port", "0", *flags],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
                         cwd=root)
    line = p.stdout.readline()
    m = re.search(r"REST at http://([\d.]+):(\d+)/", line)
    return p, (m[1], int(m[2]))

def request(name, w):
    body = json.dumps({"instances": w.tolist()}).encode()
    return (f"POST /v1/models/{name}:predict HTTP/1.1\r\nHost: x\r\nContent-Type: "
            f"application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body

def call(sock, data):
    sock.sendall(data)
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += sock.recv(65536)
    head, _, body = buf.partition(b"\r\n\r\n")
    size = int(re.search(rb"Content-Length: (\d+)", head)[1])
    while len(body) < size:
        body += sock.recv(65536)
    assert head.startswith(b"HTTP/1.1 200"), head

with tempfile.TemporaryDirectory() as tmp:
    tmp = pathlib.Path(tmp)
    windows = np.random.default_rng(0).uniform(-2, 3, (32, 64, 1)).astype("float32")
    class Floor(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 64, 1], tf.float32)])
        def serve(self, ae_features):
            return {t: ae_features[:, 0, 0] for t in TARGETS}

    m = Floor()
    tf.saved_model.save(m, str(tmp / "floor" / "1"), signatures={"serving_default": m.serve})
    small = export_model(LabquakeRegressor.from_manifest(
        build_from_preset("small", seq_len=64, n_targets=3), manifest(64)), "bench", base_dir=tmp)
    for name, base in (("floor", tmp / "floor"), ("bench", small.parent)):
        procs = {who: serve(root, base) for who, root in ROOTS.items()}
        try:
            socks = {who: socket.create_connection(addr) for who, (_, addr) in procs.items()}
            for s in socks.values():
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            reqs = [request(name, windows[i:i + 1]) for i in range(32)]
            times = {"old": [], "new": []}
            for block in range(40):
                for who in (("old", "new") if block % 2 else ("new", "old")):
                    for i in range(50):
                        t0 = time.perf_counter()
                        call(socks[who], reqs[i % 32])
                        if block >= 2: times[who].append((time.perf_counter() - t0) * 1e3)
            print(name, {w: round(float(np.percentile(t, 50)), 3) for w, t in times.items()},
                  "p90", {w: round(float(np.percentile(t, 90)), 3) for w, t in times.items()},
                  "n", len(times["old"]), "load", os.getloadavg()[0], flush=True)
        finally:
            for p, _ in procs.values():
                p.terminate()
                p.wait(20)
