"""The REST port's HTTP rules over real loopback sockets, on both fronts (the event loop used
with batching, the thread per connection without), with a stand-in for the REST API so
that only HTTP is under test: RFC 9112 framing, chunked bodies, pipelining, deadlines,
the connection cap, the server-wide body budget and the model-call bound. Every slow or
flood test is bounded in time and stays on 127.0.0.1."""

import json
import re
import resource
import socket
import threading
import time

import pytest

from labquake_tf.serving.http_conn import Limits
from labquake_tf.serving.http_front import Front


class Api:
    """Echoes each request; ``/later`` answers 0.2 s later (from another thread with the
    event loop, as a batch does; in the connection's thread without, as a model call does),
    ``/work`` runs on the front's pool and records how many ran at once."""

    def __init__(self, event_loop):
        self.lock, self.running, self.most = threading.Lock(), 0, 0
        self.event_loop = event_loop

    def respond(self, method, target, body, reply, pool):
        answer = json.dumps({"method": method, "target": target, "body": body.decode()}).encode()
        if target == "/later" and self.event_loop:
            threading.Timer(0.2, reply, (200, answer)).start()
        elif target == "/later":
            time.sleep(0.2)
            reply(200, answer)
        elif target == "/work":
            pool.submit(self._work, reply, answer)
        else:
            reply(200, answer)

    def _work(self, reply, answer):
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        time.sleep(0.2)
        with self.lock:
            self.running -= 1
        reply(200, answer)


def start(event_loop, **limits):
    api = Api(event_loop)
    front = Front(api.respond, "127.0.0.1", 0, event_loop, Limits(**limits))
    thread = threading.Thread(target=front.serve, daemon=True)
    thread.start()
    front.api = api
    return front, thread


def stop(front, thread):
    front.stop()
    thread.join(timeout=10)
    front.close()


@pytest.fixture(params=[False, True], ids=["thread-front", "event-loop-front"])
def event_loop(request):
    return request.param


@pytest.fixture
def front(event_loop):
    front, thread = start(event_loop)
    yield front
    stop(front, thread)


def connect(front, timeout=10):
    return socket.create_connection(front.server_address[:2], timeout=timeout)


def read_all(sock, deadline_s=10):
    """Everything the server sends until it closes (or ``deadline_s``): bytes, closed?"""
    data, end = b"", time.monotonic() + deadline_s
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


_LEFT = {}  # bytes read past an answer, by socket


def answer(sock):
    """The next answer on a kept-alive connection: ``(status, headers, body)``."""
    data = _LEFT.pop(id(sock), b"")
    while True:
        head, sep, body = data.partition(b"\r\n\r\n")
        if sep:
            size = int(re.search(rb"(?i)content-length: (\d+)", head)[1])
            if len(body) >= size:
                _LEFT[id(sock)] = body[size:]
                return responses(head + sep + body[:size])[0]
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk


def responses(data):
    """``[(status, headers, body)]`` of the HTTP/1.1 answers in ``data``, in order."""
    out = []
    while data:
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = dict(line.lower().split(": ", 1) for line in lines[1:])
        size = int(headers["content-length"])
        out.append((int(lines[0].split()[1]), headers, rest[:size]))
        data = rest[size:]
    return out


def get(target="/x", extra=b""):
    return b"GET " + target.encode() + b" HTTP/1.1\r\nHost: h\r\n" + extra + b"\r\n"


def post(body, target="/x"):
    return (f"POST {target} HTTP/1.1\r\nHost: h\r\nContent-Length: {len(body)}\r\n\r\n"
            .encode() + body)


SMUGGLED = get("/second")  # must never be answered as a request of its own
FRAMING = {
    "obsolete line folding": b"POST /x HTTP/1.1\r\nHost: h\r\nX-A: b\r\n Content-Length: 5\r\n"
                             b"\r\nhello" + SMUGGLED,
    "folding with a tab": b"GET /x HTTP/1.1\r\nHost: h\r\nX-A: b\r\n\tmore\r\n\r\n",
    "space before the colon": b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length : 5\r\n\r\nhello"
                              + SMUGGLED,
    "NUL in a name": b"GET /x HTTP/1.1\r\nHost: h\r\nX\x00A: 1\r\n\r\n",
    "control byte in a name": b"GET /x HTTP/1.1\r\nHost: h\r\nX\x01A: 1\r\n\r\n",
    "control byte in a value": b"GET /x HTTP/1.1\r\nHost: h\r\nX-A: 1\x01\r\n\r\n",
    "NUL in a value": b"GET /x HTTP/1.1\r\nHost: h\r\nX-A: 1\x002\r\n\r\n",
    "Content-Length and Transfer-Encoding": b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 4"
                                            b"\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
                                            + SMUGGLED,
    "unknown Transfer-Encoding": b"POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n",
    "empty Transfer-Encoding": b"POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding:\r\n"
                               b"Content-Length: 5\r\n\r\nhello",
    "chunked not last": b"POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
    "conflicting Content-Lengths": b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n"
                                   b"Content-Length: 6\r\n\r\nhello!",
    "a Content-Length list": b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 5, 6\r\n\r\nhello!",
    "a signed Content-Length": b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: +5\r\n\r\nhello",
    "no Host": b"GET /x HTTP/1.1\r\n\r\n",
    "not HTTP": b"GARBAGE\r\n\r\n",
    "bad chunk size": b"POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                      b"zz\r\nhello\r\n0\r\n\r\n",
    # llhttp lets these through; http_conn checks them.
    "Transfer-Encoding in HTTP/1.0": b"POST /x HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"
                                     b"5\r\nhello\r\n0\r\n\r\n" + SMUGGLED,
    "two Hosts": b"GET /x HTTP/1.1\r\nHost: h\r\nHost: i\r\n\r\n",
}


@pytest.mark.parametrize("case", FRAMING)
def test_framing_errors_get_400_and_a_closed_connection(front, case):
    with connect(front) as sock:
        sock.sendall(FRAMING[case])
        data, closed = read_all(sock)
    answers = responses(data)
    assert closed and [a[0] for a in answers] == [400], (case, data[:200])
    assert answers[0][1]["connection"] == "close"
    assert list(json.loads(answers[0][2])) == ["error"]
    with connect(front) as sock:  # and the server goes on
        sock.sendall(get())
        assert answer(sock)[0] == 200


@pytest.mark.parametrize("sent, status", [
    (b"GET /x HTTP/2.0\r\nHost: h\r\n\r\n", 505),
    (b"GET /x HTTP/1.1\r\nHost: h\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n"
     + SMUGGLED, 200),
    (b"GET /x HTTP/1.1\r\nHost: h\r\nX-A: " + b"b" * 70000 + b"\r\n\r\n", 431),
], ids=["HTTP/2.0", "an Upgrade answered, never followed", "a 70 kB head"])
def test_versions_upgrades_and_big_heads_close_the_connection(front, sent, status):
    with connect(front) as sock:
        for i in range(0, len(sent), 1000):  # a big head arrives in pieces
            sock.sendall(sent[i:i + 1000])
        data, closed = read_all(sock)
    answers = responses(data)
    assert closed and [a[0] for a in answers] == [status], data[:200]
    assert answers[0][1]["connection"] == "close"


def test_chunked_bodies_are_read_and_the_connection_kept(front):
    chunked = (b"POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nX-Trailer: t\r\n\r\n")
    with connect(front) as sock:
        sock.sendall(chunked + get("/after"))
        answers = [answer(sock), answer(sock)]
    assert [a[0] for a in answers] == [200, 200]
    assert json.loads(answers[0][2])["body"] == "hello, world"
    assert json.loads(answers[1][2])["target"] == "/after"


@pytest.mark.parametrize("piece", [None, 7], ids=["one-write", "7-byte-pieces"])
def test_pipelined_requests_are_answered_in_order(front, piece):
    # The first is answered last by its API (0.2 s later, from another thread).
    sent = b"".join([post(b"one", "/later"), get("/two"), post(b"three", "/three"),
                     get("/later")])
    with connect(front) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(0, len(sent), piece or len(sent)):
            sock.sendall(sent[i:i + (piece or len(sent))])
            if piece:
                time.sleep(0.002)
        data = b""
        while data.count(b"HTTP/1.1 200") < 4:
            chunk = sock.recv(65536)
            assert chunk, data
            data += chunk
    got = [json.loads(a[2]) for a in responses(data)]
    assert [(g["target"], g["body"]) for g in got] == [
        ("/later", "one"), ("/two", ""), ("/three", "three"), ("/later", "")]


def test_a_one_byte_per_second_head_gets_408_or_a_close(event_loop):
    front, thread = start(event_loop, timeout_s=1.5)
    try:
        with connect(front) as sock:
            t0, head, closed = time.monotonic(), get(), False
            for byte in head[:8]:  # at most 8 s: the server must give up after 1.5 s
                try:
                    sock.sendall(bytes([byte]))
                except OSError:
                    closed = True
                    break
                data, closed = read_all(sock, 1.0)
                if closed:
                    break
            waited = time.monotonic() - t0
        assert closed and 1.4 < waited < 4.0
        assert not data or responses(data)[0][0] == 408
        # a request sent in time on the same server is answered
        with connect(front) as sock:
            sock.sendall(get())
            assert answer(sock)[0] == 200
    finally:
        stop(front, thread)


def test_a_slow_body_counts_too_and_idle_connections_close(event_loop):
    front, thread = start(event_loop, timeout_s=1.0, idle_s=0.5)
    try:
        slow, idle = connect(front), connect(front)
        t0 = time.monotonic()
        slow.sendall(b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\nabc")
        data, closed = read_all(slow, 5)
        assert closed and responses(data)[0][0] == 408 and time.monotonic() - t0 < 4
        assert b"--rest_api_timeout_in_ms" in data
        data, closed = read_all(idle, 5)  # never sent a byte: closed, nothing to answer
        assert closed and data == b""
        slow.close()
        idle.close()
    finally:
        stop(front, thread)


def test_800_half_open_connections_do_not_delay_a_request(event_loop):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 1200
    if soft != resource.RLIM_INFINITY and soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            pytest.skip(f"the open-file limit ({hard}) is below {need}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    front, thread = start(event_loop)
    socks = []
    try:
        for i in range(800):  # half send nothing, half a partial head
            sock = connect(front, timeout=30)
            if i % 2:
                sock.sendall(b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Le")
            socks.append(sock)
        t0 = time.monotonic()
        with connect(front) as sock:
            sock.sendall(post(b"normal"))
            data = b""
            while b"normal" not in data:
                chunk = sock.recv(65536)
                assert chunk
                data += chunk
        took = time.monotonic() - t0
        assert responses(data)[0][0] == 200 and took < 2.0, took
    finally:
        for sock in socks:
            sock.close()
        stop(front, thread)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_connections_over_the_cap_get_503_while_open_ones_go_on(event_loop):
    front, thread = start(event_loop, max_connections=4)
    try:
        held = [connect(front) for _ in range(4)]
        for sock in held:
            sock.sendall(get())
            assert answer(sock)[0] == 200
        with connect(front) as extra:
            data, closed = read_all(extra)
        assert closed
        if data:  # refused with an answer (the client may see a reset instead)
            status, headers, body = responses(data)[0]
            assert status == 503 and "--max-connections" in json.loads(body)["error"]
        for sock in held:  # the established ones keep working
            sock.sendall(post(b"still"))
            assert json.loads(answer(sock)[2])["body"] == "still"
        held.pop().close()
        deadline = time.monotonic() + 5
        while len(front.connections) > 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        with connect(front) as sock:  # a slot came free
            sock.sendall(get())
            assert answer(sock)[0] == 200
        for sock in held:
            sock.close()
    finally:
        stop(front, thread)


def test_body_bytes_are_bounded_per_request_and_across_the_server(event_loop):
    front, thread = start(event_loop, max_body_bytes=600, max_buffered_bytes=1000)
    try:
        with connect(front) as sock:
            sock.sendall(b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 601\r\n\r\n")
            data, closed = read_all(sock)
            assert closed and responses(data)[0][0] == 413
        first = connect(front)  # holds 600 of the 1000 bytes while its body trickles in
        first.sendall(b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 600\r\n\r\n" + b"a" * 100)
        time.sleep(0.3)
        with connect(front) as sock:
            sock.sendall(post(b"b" * 500))
            data, closed = read_all(sock)
        status, _, body = responses(data)[0]
        assert closed and status == 503 and "--max-buffered-body-bytes" in body.decode()
        with connect(front) as sock:  # what fits in the rest is served
            sock.sendall(post(b"c" * 400))
            assert answer(sock)[0] == 200
        first.sendall(b"a" * 500)
        assert len(json.loads(answer(first)[2])["body"]) == 600
        first.close()
        deadline = time.monotonic() + 5
        while front.budget.left != 1000 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert front.budget.left == 1000  # all given back
        # a chunked body is counted as it comes
        with connect(front) as sock:
            sock.sendall(b"POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                         + b"190\r\n" + b"d" * 400 + b"\r\n" + b"190\r\n" + b"d" * 400
                         + b"\r\n0\r\n\r\n")
            data, closed = read_all(sock)
            assert closed and responses(data)[0][0] == 413
    finally:
        stop(front, thread)


def test_model_calls_at_once_are_bounded_by_rest_api_num_threads(event_loop):
    front, thread = start(event_loop, threads=2)
    try:
        socks = [connect(front) for _ in range(6)]
        for sock in socks:
            sock.sendall(get("/work"))
        for sock in socks:
            assert answer(sock)[0] == 200
            sock.close()
        assert front.api.most == 2
    finally:
        stop(front, thread)
