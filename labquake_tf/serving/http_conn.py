"""One REST connection's HTTP/1.1, parsed by httptools (llhttp), within ``Limits``.

``Connection`` is an ``asyncio.Protocol`` around an ``httptools.HttpRequestParser``: the
event loop drives it, or a thread per connection through a socket transport
(``http_front``); both fronts share it, so one parser decides every request. llhttp is
uvicorn's C parser: h11 (pure Python) cost ~30 us of CPU a request, which made the REST
p50 3.5-4.7 % slower than the hand parser before it and batched throughput at 256 clients
lower; llhttp costs a few.

Framing is RFC 9112's, as llhttp reads it in its strict mode (obsolete line folding,
whitespace before the colon, control bytes, Content-Length with Transfer-Encoding, an
unknown Transfer-Encoding, repeated Content-Lengths), plus what it lets through, checked
here: an empty Transfer-Encoding, Transfer-Encoding in HTTP/1.0, a missing or repeated Host
in HTTP/1.1, versions other than 1.0 and 1.1, the head's size and header count. Every
framing error is a 400 (431 for a head over the limits, 505 for the version) and closes the
connection, so a proxy in front and this server never disagree on where a request ends.
Chunked bodies are accepted. Pipelined requests are parsed as they come and answered in
order, one at a time; the event loop stops reading a client whose requests wait.
"""

import asyncio
import json
import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http import HTTPStatus

import httptools

_CLOSE = "Connection: close\r\n"
_WHY = {"Duplicate Content-Length": "conflicting Content-Length headers (RFC 9112 section 6.3)",
        "Invalid character in Content-Length": "bad Content-Length (digits only)"}


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


class _Refused(Exception):
    """Raised in a parser callback: the request gets ``status`` and the connection closes."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


class Connection(asyncio.Protocol):
    """One client connection: bytes in (``data_received``), answers out through its
    transport; driven by the event loop, or by the connection's own thread."""

    def __init__(self, front):
        self.front, self.limits, self.transport = front, front.limits, None
        self.parser = httptools.HttpRequestParser(self)
        # Whole requests waiting for their turn: (method, target, body, keep-alive, bytes
        # held), or (None, status, message) for a refusal; answered in order.
        self.queue = deque()
        self.busy = self.parsing = self.close = self.eof = self.dead = False
        self.keep_alive, self.answering, self.held = True, 0, 0
        self.started = None  # when the request being received began (None: none is)
        self.last = time.monotonic()  # last bytes in or out
        self.in_head, self.head_bytes = False, 0
        self.url, self.headers, self.parts, self.size, self.reserved = b"", [], [], 0, 0
        self.chunked = False

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
        if self.held:
            self.front.budget.give(self.held)
            self.held = self.answering = 0

    def data_received(self, data):
        self.last = time.monotonic()
        if self.dead:  # a refused request: nothing after it is read
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as e:
            refused = e.__context__
            if not isinstance(refused, _Refused):
                raise
            self._refuse(refused.status, str(refused))
        except httptools.HttpParserUpgrade:
            # The request is whole; what follows it would be another protocol, never served.
            self.dead = True
            if self.queue:
                self.queue[-1] = self.queue[-1][:3] + (False,) + self.queue[-1][4:]
        except httptools.HttpParserError as e:
            self._refuse(400, f"Bad request: {_WHY.get(str(e), str(e))}")
        else:
            if self.in_head:  # a head that arrives in pieces is bounded as it comes
                self.head_bytes += len(data)
                if self.head_bytes > self.limits.max_head_bytes:
                    self._refuse(431, f"Request head over {self.limits.max_head_bytes} bytes")
        if not self.busy:
            self._next()
        elif self.queue:  # a client that sends ahead waits for its answers
            self.transport.pause_reading()

    def eof_received(self):
        self.eof = True
        if self.started is not None and not self.dead:
            of = "" if self.chunked else f" of {self.reserved}"
            self._refuse(400, "Bad request: the request ended inside its head" if self.in_head
                         else f"Bad request: the body ended after {self.size}{of} bytes")
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

    # httptools' callbacks, in the order of a request's bytes.

    def on_message_begin(self):
        self.started, self.in_head, self.head_bytes = self.last, True, 0
        self.url, self.headers, self.parts, self.size, self.reserved = b"", [], [], 0, 0

    def on_url(self, url):
        self.url += url

    def on_header(self, name, value):
        if self.in_head:  # (not a chunked body's trailer fields)
            self.headers.append((name.lower(), value))
            if len(self.headers) > self.limits.max_headers:
                raise _Refused(431, f"Too many headers (over {self.limits.max_headers})")

    def on_headers_complete(self):
        """What llhttp leaves to us on a head; the body's share of the budget."""
        self.in_head, parser = False, self.parser
        version = parser.get_http_version()
        if version not in ("1.1", "1.0"):
            raise _Refused(505, f"HTTP/{version} is not served; use HTTP/1.1")
        head, size, te, hosts, expect = len(self.url), 0, None, 0, False
        for name, value in self.headers:
            head += len(name) + len(value) + 4
            if name == b"content-length":
                size = int(value)  # llhttp checked it: digits, and one header
            elif name == b"transfer-encoding":
                te = value.strip()
            elif name == b"host":
                hosts += 1
            elif name == b"expect":
                expect = value.lower() == b"100-continue"
        if head > self.limits.max_head_bytes:  # one read can bring a whole larger head
            raise _Refused(431, f"Request head over {self.limits.max_head_bytes} bytes")
        if te is not None and (not te or version == "1.0"):
            raise _Refused(400, "Bad request: an empty Transfer-Encoding, or one in HTTP/1.0 "
                                "(RFC 9112 section 6.1)")
        if version == "1.1" and hosts != 1:
            raise _Refused(400, f"Bad request: {'no' if not hosts else hosts} Host headers "
                                f"(RFC 9112 section 3.2 wants one)")
        method = parser.get_method()
        if method not in (b"GET", b"POST"):
            raise _Refused(501, f"Unsupported method ({method.decode('latin-1')!r})")
        self.chunked = te is not None
        self._hold(size)
        if expect and version == "1.1" and not self.busy and not self.queue:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # curl waits 1 s without

    def on_body(self, data):
        self.parts.append(data)
        self.size += len(data)
        if self.size > self.reserved:  # a chunked body has no size up front
            self._hold(self.size)

    def on_message_complete(self):
        parts = self.parts
        body = parts[0] if len(parts) == 1 else b"".join(parts)
        self.queue.append((self.parser.get_method().decode(), self.url.decode("latin-1"), body,
                           self.parser.should_keep_alive(), self.reserved))
        self.started, self.parts = None, []

    def _hold(self, size):
        """Reserve ``size`` body bytes for the request being received, or refuse it."""
        limit = self.limits.max_body_bytes
        if size > limit:
            raise _Refused(413, f"request body of {size} bytes is over the limit of "
                                f"{limit} bytes (--max-body-bytes)")
        if not self.front.budget.take(size - self.reserved):
            raise _Refused(503, "the server holds its limit of request bodies "
                                "(--max-buffered-body-bytes); retry")
        self.held += size - self.reserved
        self.reserved = size

    def _refuse(self, status, message):
        """Answer ``status`` after the requests before it, then close; read nothing more."""
        self.dead, self.started = True, None
        self.queue.append((None, status, message))
        if self.transport is not None:
            self.transport.pause_reading()

    def _next(self):
        self.parsing = True
        try:
            while self.transport is not None and not self.busy and self.queue:
                method, target, body, *rest = self.queue.popleft()
                if method is None:
                    return self._error(target, body)
                self.busy, self.keep_alive, self.answering = True, rest[0], rest[1]
                self.front.respond(method, target, body, self.answer, self.front.pool)
            if self.eof and not self.busy and self.transport is not None:
                self.transport.close()
        finally:
            self.parsing = False

    def _error(self, status, message):
        self.close = True
        self.answer(status, json.dumps({"error": message}).encode())

    def answer(self, status, data, content_type="application/json"):
        """Send one answer; from a batch or pool thread, through the event loop."""
        front = self.front
        if front.loop is not None and threading.get_ident() != front.thread_id:
            try:
                return front.loop.call_soon_threadsafe(self.answer, status, data, content_type)
            except RuntimeError:  # the server is closing
                return
        if self.answering:  # the answered request's body is no longer held
            front.budget.give(self.answering)
            self.held -= self.answering
            self.answering = 0
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
        self.busy = False
        transport.resume_reading()
        if not self.parsing:
            self._next()
