"""One REST connection's HTTP/1.1, parsed by h11, within ``Limits``.

``Connection`` is an ``asyncio.Protocol`` around an ``h11.Connection``: the event loop
drives it, or a thread per connection through a socket transport (``http_front``); both
fronts share it, so one parser decides every request. h11 reads each request's head, and
its body when chunked, with one ``h11.Connection`` per request (the bytes after a request
go to the next one). Two things are done here for speed, as h11 decided them: the bytes of
a body whose Content-Length h11 checked are counted off, and our answers (a status, two
headers and a body we made) are written as they are; through h11 they cost 6x the old
hand-written parser per request, which showed in batched throughput at 256 clients.

Framing is RFC 9112's, as h11 reads it, plus what h11 lets through: obsolete line folding,
control bytes in field values and Content-Length with Transfer-Encoding are refused. Every
framing error is a 400 (431 for a head over ``max_head_bytes``) and closes the connection,
so a proxy in front and this server never disagree on where a request ends. Chunked bodies
are accepted. Pipelined requests are answered in order: the next is parsed once the one
before has its answer.
"""

import asyncio
import json
import os
import re
import threading
import time
from dataclasses import dataclass, field
from http import HTTPStatus

import h11

_CTL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")  # HTAB is the one control byte allowed
_HEAD_END = re.compile(rb"\n\r?\n")
_FOLD = re.compile(rb"\n[ \t]")
_CLOSE = "Connection: close\r\n"


@dataclass
class Limits:
    """What one client, and all of them together, may hold (``labquake serve``'s flags)."""

    max_body_bytes: int = 64 << 20  # one request's body; 413 beyond
    max_buffered_bytes: int = 256 << 20  # request bodies held at once, server-wide; 503 beyond
    timeout_s: float = 30.0  # --rest_api_timeout_in_ms: a request's first byte to its last; 408
    idle_s: float = 60.0  # a keep-alive connection with no request in progress is closed
    max_connections: int = 2048  # open at once; a new one beyond gets a 503 and is closed
    # --rest_api_num_threads: model calls at once on REST; TF Serving's default.
    threads: int = field(default_factory=lambda: 4 * (os.cpu_count() or 1))
    max_head_bytes: int = 65536  # request line and headers; 431 beyond
    max_headers: int = 100


class Budget:
    """Body bytes held across the server; taken when a request says its size, given back
    once it is answered."""

    def __init__(self, total):
        self.left, self._lock = total, threading.Lock()

    def take(self, n):
        with self._lock:
            if n > self.left:
                return False
            self.left -= n
            return True

    def give(self, n):
        with self._lock:
            self.left += n


class Connection(asyncio.Protocol):
    """One client connection: bytes in (``data_received``), answers out through its
    transport; driven by the event loop, or by the connection's own thread."""

    def __init__(self, front):
        self.front, self.limits, self.transport = front, front.limits, None
        self.h11 = self._parser()
        self.busy = self.parsing = self.close = False
        self.started = None  # when the request being received began (None: none is)
        self.last = time.monotonic()  # last bytes in or out
        self.request, self.parts, self.size, self.held, self.ahead = None, [], 0, 0, 0
        self.chunked, self.keep_alive, self.body_left = False, True, 0

    def _parser(self):
        return h11.Connection(h11.SERVER, max_incomplete_event_size=self.limits.max_head_bytes)

    def connection_made(self, transport):
        self.transport = transport
        if len(self.front.connections) >= self.limits.max_connections:
            self.close = True
            self.answer(503, json.dumps({"error": f"the server has {self.limits.max_connections}"
                                                  " connections open (--max-connections); "
                                                  "retry"}).encode())
            self.transport = None
            return
        self.front.connections.add(self)

    def connection_lost(self, exc):
        self.front.connections.discard(self)
        self.transport = None  # an answer for a client that left is dropped
        self._release()

    def data_received(self, data):
        self.last = time.monotonic()
        if self.started is None and not self.busy:
            self.started = self.last
        if self.body_left:
            return self._count_off(data)
        self.h11.receive_data(data)
        if not self.busy:
            self._next()
        else:  # a client that sends ahead waits for its answers
            self.ahead += len(data)
            if self.ahead > self.limits.max_head_bytes:
                self.transport.pause_reading()

    def eof_received(self):
        if self.body_left:
            self._error(400, f"Bad request: the body ended after {self.size} of "
                             f"{self.size + self.body_left} bytes")
            return True
        self.h11.receive_data(b"")
        if not self.busy:
            self._next()
        return True  # half-closed: what was asked is still answered

    def wait_s(self, now):
        """Seconds until this connection's deadline: the request's, or the idle one's."""
        if self.started is None:
            return self.last + self.limits.idle_s - now
        return self.started + self.limits.timeout_s - now

    def expire(self):
        """The deadline passed: a partial request gets a 408, an idle connection is closed."""
        if self.transport is None or self.busy:
            return
        if self.started is None:
            self.transport.close()
        else:
            self._error(408, f"the request was not received in full within "
                             f"{self.limits.timeout_s * 1e3:.0f} ms (--rest_api_timeout_in_ms)")

    def _next(self):
        self.parsing = True
        try:
            while self.transport is not None and not self.busy and not self.body_left:
                conn = self.h11  # a new one for each request
                if conn.their_state is h11.IDLE:
                    data, ended = conn.trailing_data
                    if not data and not ended:
                        return  # nothing of the next request yet: h11 would say NEED_DATA
                    if _folded(data):
                        return self._error(400, "Bad request: obsolete line folding in the "
                                                "head (RFC 9112 section 5.2)")
                try:
                    event = conn.next_event()
                except h11.RemoteProtocolError as e:
                    return self._error(431 if e.error_status_hint == 431 else 400,
                                       f"Bad request: {e}")
                kind = type(event)
                if kind is h11.Request:
                    if not self._begin(event):
                        return
                    if not self.chunked:  # h11 checked the length: its bytes are counted off
                        rest, ended = conn.trailing_data
                        self.body_left = self.held
                        self._count_off(rest, ended)
                elif kind is h11.Data:
                    if not self._take(event.data):
                        return
                elif kind is h11.EndOfMessage:
                    self._dispatch(*conn.trailing_data)
                elif kind is h11.ConnectionClosed:
                    return self.transport.close()
                else:  # NEED_DATA, or PAUSED until our answer is out
                    return
        finally:
            self.parsing = False

    def _begin(self, request):
        """Checks on a request's head that h11 leaves to us; the body's share of the budget."""
        limits, head = self.limits, len(request.target)
        size, length, chunked, keep_alive = 0, False, False, request.http_version == b"1.1"
        headers = list(request.headers)  # one pass over h11's Sequence: its iterator is slow
        if len(headers) > limits.max_headers:
            return self._error(431, f"Too many headers (over {limits.max_headers})")
        for name, value in headers:
            head += len(name) + len(value) + 4
            if _CTL.search(value):
                return self._error(400, f"Bad request: a control byte in the value of the "
                                        f"{name.decode()!r} header")
            if name == b"content-length":
                size, length = int(value), True  # h11 checked it: digits, and one value
            elif name == b"transfer-encoding":
                chunked = True
            elif name == b"connection" and b"close" in value.lower():
                keep_alive = False
        # h11 bounds a head that arrives in pieces; one read can bring a whole larger one.
        if head > limits.max_head_bytes:
            return self._error(431, f"Request head over {limits.max_head_bytes} bytes")
        if chunked and length:
            return self._error(400, "Bad request: both Content-Length and Transfer-Encoding "
                                    "(RFC 9112 section 6.3); send one")
        method = request.method.decode()
        if method not in ("GET", "POST"):
            return self._error(501, f"Unsupported method ({method!r})")
        if not self._hold(size):
            return False
        self.request, self.chunked = (method, request.target.decode("latin-1")), chunked
        self.keep_alive = keep_alive
        if self.h11.they_are_waiting_for_100_continue:  # curl waits 1 s without
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        return True

    def _count_off(self, data, ended=False):
        """Take the rest of a Content-Length body from ``data``; dispatch it once whole."""
        take = data[:self.body_left] if len(data) > self.body_left else data
        if take:
            self.parts.append(take)
            self.size += len(take)
            self.body_left -= len(take)
        if not self.body_left:
            self._dispatch(data[len(take):], ended)

    def _dispatch(self, leftover, ended):
        """The request is whole: to the API, and what came after it to a new parser."""
        body = self.parts[0] if len(self.parts) == 1 else b"".join(self.parts)
        self.parts, self.busy, self.body_left = [], True, 0
        self.h11 = self._parser()
        if leftover:  # pipelined: the next request has begun
            self.h11.receive_data(leftover)
        if ended:
            self.h11.receive_data(b"")
        method, target = self.request
        self.front.respond(method, target, body, self.answer, self.front.pool)

    def _take(self, data):
        # A chunked body has no size up front: it is counted as it comes.
        if self.chunked and not self._hold(self.size + len(data)):
            return False
        self.size += len(data)
        self.parts.append(data)
        return True

    def _hold(self, size):
        """Reserve ``size`` body bytes in all (more than held already), or answer why not."""
        limit = self.limits.max_body_bytes
        if size > limit:
            return self._error(413, f"request body of {size} bytes is over the limit of "
                                    f"{limit} bytes (--max-body-bytes)")
        if size > self.held:
            if not self.front.budget.take(size - self.held):
                return self._error(503, "the server holds its limit of request bodies "
                                        "(--max-buffered-body-bytes); retry")
            self.held = size
        return True

    def _release(self):
        if self.held:
            self.front.budget.give(self.held)
            self.held = 0

    def _error(self, status, message):
        self.close = True
        self.answer(status, json.dumps({"error": message}).encode())
        return False

    def answer(self, status, data, content_type="application/json"):
        """Send one answer; from a batch or pool thread, through the event loop."""
        front = self.front
        if front.loop is not None and threading.get_ident() != front.thread_id:
            try:
                return front.loop.call_soon_threadsafe(self.answer, status, data, content_type)
            except RuntimeError:  # the server is closing
                return
        self._release()
        transport = self.transport
        if transport is None:
            return
        close = self.close or not self.keep_alive
        transport.write(f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\nContent-Type: "
                        f"{content_type}\r\nContent-Length: {len(data)}\r\n"
                        f"{_CLOSE if close else ''}\r\n".encode() + data)  # one packet
        self.last = time.monotonic()
        if close:
            self.busy = True  # HTTP/1.0, Connection: close, or an error: nothing more is read
            transport.close()
            return
        self.busy, self.size, self.ahead = False, 0, 0
        self.started = self.last if self.h11.trailing_data[0] else None
        transport.resume_reading()
        if not self.parsing:
            self._next()


def _folded(data):
    """Whether the head at the start of ``data`` has an obsolete line fold (h11 unfolds them;
    a proxy may not, and would see other headers than we do)."""
    end = _HEAD_END.search(data)
    return _FOLD.search(data, 0, end.start() if end else len(data)) is not None
