"""The REST port against hostile clients: ``labquake serve`` as a user starts it (batching
off and on), probed over loopback with raw sockets.

    python benchmarks/probe_http.py

Probes: RFC 9112 framing cases (each must get a 400 and a closed connection, and nothing
after it may be answered as a request of its own), pipelined requests (answered in
order), a request head sent at 1 byte per second (408 or a close within
``--rest_api_timeout_in_ms``), and 800 half-open connections held while a normal request
is timed (goal: under 2 s). Prints one line per probe and front; exit status 1 if any
probe failed.
"""

import argparse
import json
import pathlib
import re
import resource
import socket
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from bench_serving import ServeProcess, manifest  # noqa: E402

GET = b"GET /v1/models/bench HTTP/1.1\r\nHost: h\r\n\r\n"
SMUGGLED = b"GET /v1/models/other HTTP/1.1\r\nHost: h\r\n\r\n"
FRAMING = {
    "obs-fold": b"POST /v1/models/bench:predict HTTP/1.1\r\nHost: h\r\nX-A: b\r\n "
                b"Content-Length: 5\r\n\r\nhello" + SMUGGLED,
    "space before colon": b"POST /v1/models/bench:predict HTTP/1.1\r\nHost: h\r\n"
                          b"Content-Length : 5\r\n\r\nhello" + SMUGGLED,
    "NUL in a name": b"GET /v1/models/bench HTTP/1.1\r\nHost: h\r\nX\x00A: 1\r\n\r\n",
    "control byte in a value": b"GET /v1/models/bench HTTP/1.1\r\nHost: h\r\nX-A: \x07\r\n\r\n",
    "CL + TE": b"POST /v1/models/bench:predict HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + SMUGGLED,
    "unknown TE": b"POST /v1/models/bench:predict HTTP/1.1\r\nHost: h\r\n"
                  b"Transfer-Encoding: gzip\r\n\r\n",
    "empty TE": b"POST /v1/models/bench:predict HTTP/1.1\r\nHost: h\r\nTransfer-Encoding:\r\n"
                b"Content-Length: 5\r\n\r\nhello",
    "conflicting CLs": b"POST /v1/models/bench:predict HTTP/1.1\r\nHost: h\r\n"
                       b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
}


def read_until_closed(sock, seconds):
    data, end = b"", time.monotonic() + seconds
    while time.monotonic() < end:
        sock.settimeout(max(end - time.monotonic(), 0.01))
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            return data, False
        except ConnectionResetError:
            return data, True
        if not chunk:
            return data, True
        data += chunk
    return data, False


def probe(address, timeout_s):
    results = []
    for name, data in FRAMING.items():
        with socket.create_connection(address, timeout=10) as sock:
            sock.sendall(data)
            reply, closed = read_until_closed(sock, 5)
        ok = closed and reply.startswith(b"HTTP/1.1 400") and reply.count(b"HTTP/1.1") == 1
        results.append((f"framing: {name}", ok, reply.split(b"\r\n")[0].decode()))
    with socket.create_connection(address, timeout=10) as sock:
        paths = [f"/v1/models/bench/versions/{v}" for v in (1, 7, 1)] + ["/v1/models/nope"]
        sock.sendall(b"".join(f"GET {p} HTTP/1.1\r\nHost: h\r\n\r\n".encode() for p in paths))
        data = b""
        while data.count(b"HTTP/1.1 ") < 4:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    statuses = [int(code) for code in re.findall(rb"HTTP/1\.1 (\d{3}) ", data)]
    results.append(("pipelining: 4 requests in one write", statuses == [200, 404, 200, 404],
                    str(statuses)))
    with socket.create_connection(address, timeout=10) as sock:
        t0, closed, reply = time.monotonic(), False, b""
        for byte in GET[:int(timeout_s) + 10]:  # bounded: a few seconds past the timeout
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                closed = True
                break
            reply, closed = read_until_closed(sock, 1.0)
            if closed:
                break
        waited = time.monotonic() - t0
    ok = closed and (not reply or reply.startswith(b"HTTP/1.1 408")) and waited < timeout_s + 3
    results.append(("1 byte per second head", ok, f"{reply.split(b' ')[1:2]} closed after "
                                                   f"{waited:.1f} s"))
    held = []
    try:
        for i in range(800):
            sock = socket.create_connection(address, timeout=30)
            if i % 2:
                sock.sendall(b"POST /v1/models/bench:predict HTTP/1.1\r\nHost: h\r\nCont")
            held.append(sock)
        t0 = time.monotonic()
        with socket.create_connection(address, timeout=10) as sock:
            sock.sendall(GET)
            reply = sock.recv(65536)
        took = time.monotonic() - t0
    finally:
        for sock in held:
            sock.close()
    results.append(("800 half-open connections, a request", reply.startswith(b"HTTP/1.1 200")
                    and took < 2.0, f"{took * 1e3:.1f} ms"))
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout-ms", type=int, default=3000,
                        help="--rest_api_timeout_in_ms of the probed servers")
    args = parser.parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4096)), hard))
    from labquake_tf.models import build_from_preset
    from labquake_tf.serving.export import export_model
    from labquake_tf.task import LabquakeRegressor

    model = build_from_preset("small", seq_len=64, n_targets=3)
    failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        path = export_model(LabquakeRegressor.from_manifest(model, manifest(64)), "bench",
                            base_dir=pathlib.Path(tmp))
        (pathlib.Path(tmp) / "batching.txt").write_text("max_batch_size { value: 64 }\n")
        for batching in (False, True):
            flags = ["--rest_api_timeout_in_ms", str(args.timeout_ms)]
            if batching:
                flags += ["--batching_parameters_file", str(pathlib.Path(tmp) / "batching.txt")]
            server = ServeProcess(path.parent, *flags)
            try:
                host, port = server.rest[len("http://"):].rsplit(":", 1)
                for name, ok, detail in probe((host, int(port)), args.timeout_ms / 1e3):
                    failed += not ok
                    print(f"batching={'on ' if batching else 'off'} {name:<42} "
                          f"{'ok  ' if ok else 'FAIL'} {detail}", flush=True)
            finally:
                server.close()
    print(json.dumps({"failed": failed}))
    return 1 if failed else 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    raise SystemExit(main())
