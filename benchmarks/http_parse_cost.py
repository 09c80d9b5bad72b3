"""CPU a REST request costs the HTTP front alone: a connection fed the same keep-alive
``:predict`` request (7 headers, one 64-step window) in memory, a stand-in API answering at
once; no sockets, no model. Each tree in its own process, alternated.

    python benchmarks/http_parse_cost.py OLD_TREE [NEW_TREE] [--rounds 3]

OLD_TREE may be the main before the h11 front (``serving/server.py``'s ``_Connection``, a
hand parser) or any tree with ``serving/http_conn.py``.
"""
import argparse
import json
import pathlib
import subprocess
import sys

CHILD = r'''
import json, sys, time
root = sys.argv[1]
sys.path.insert(0, root)
body = json.dumps({"instances": [[[0.5]] * 64]}).encode()
req = (f"POST /v1/models/bench:predict HTTP/1.1\r\nHost: 127.0.0.1:8501\r\n"
       f"User-Agent: python-requests/2.31\r\nAccept-Encoding: gzip, deflate\r\nAccept: */*\r\n"
       f"Connection: keep-alive\r\nContent-Type: application/json\r\n"
       f"Content-Length: {len(body)}\r\n\r\n").encode() + body

class Transport:
    def write(self, data): pass
    def close(self): pass
    def pause_reading(self): pass
    resume_reading = abort = pause_reading

class Pool:
    def submit(self, fn, *args): fn(*args)

def respond(method, path, body, reply, pool):
    reply(200, b'{"predictions": [[0.1, 0.2, 0.3]]}')

class Front: pass
front = Front()
front.connections, front.loop, front.thread_id, front.pool = set(), None, None, Pool()
try:
    from labquake_tf.serving import http_conn
    front.limits, front.budget = http_conn.Limits(), http_conn.Budget(1 << 30)
    front.respond = respond
    conn = http_conn.Connection(front)
except ImportError:  # the hand parser before h11
    from labquake_tf.serving import server
    class Owner: max_body_bytes = 64 << 20
    Owner.respond = staticmethod(respond)
    front.owner = Owner()
    conn = server._Connection(front)
conn.connection_made(Transport())
for _ in range(2000):
    conn.data_received(req)
best = []
for _ in range(5):
    t0 = time.perf_counter()
    for _ in range(10000):
        conn.data_received(req)
    best.append((time.perf_counter() - t0) / 10000 * 1e6)
print(json.dumps(sorted(best)[:3]))
'''


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("old")
    parser.add_argument("new", nargs="?", default=".")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    roots = {"old": str(pathlib.Path(args.old).resolve()),
             "new": str(pathlib.Path(args.new).resolve())}
    for r in range(args.rounds):
        out = {}
        for who in (("old", "new") if r % 2 == 0 else ("new", "old")):
            text = subprocess.run([sys.executable, "-c", CHILD, roots[who]], check=True,
                                  capture_output=True, text=True).stdout
            out[who] = min(json.loads(text.strip().splitlines()[-1]))
        print(f"round {r + 1}: old {out['old']:.1f} us/request, new {out['new']:.1f} "
              f"us/request (best of 5 x 10,000)", flush=True)


if __name__ == "__main__":
    main()
