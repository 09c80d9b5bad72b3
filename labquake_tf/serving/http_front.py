"""The REST port, served one of two ways, both parsing with ``http_conn.Connection``:

* batching (``event_loop``): one asyncio loop thread reads, parses and answers every
  connection, and a request waits for its batch holding no thread. With a thread per
  connection, 64 clients cost ~0.2 ms of CPU a request in thread switches and the GIL
  handed round, which bounded batched throughput;
* without: a thread per connection that also runs its model call (TF releases the GIL
  while a model runs, so they overlap), with no hand-off between threads: a loop plus a
  pool costs two hand-offs a request, measured slower unbatched.

Both: a 1024-deep listen backlog, at most ``Limits.max_connections`` open (a new one beyond
gets a 503 and is closed; those open go on), ``Limits.threads`` model calls at once, and
every connection's deadline kept (``Connection.wait_s``): a request in
``Limits.timeout_s`` from its first byte to its last, an idle one closed after ``idle_s``.
"""

import asyncio
import resource
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from labquake_tf.serving.http_conn import Budget, Connection, Limits

_BACKLOG = 1024  # the stdlib's 5 reset connections at 64 concurrent clients
_SPARE_FDS = 256  # for TF, gRPC, model files: not given to connections


class _SocketTransport:
    """The transport of a connection served by its own thread (blocking writes)."""

    def __init__(self, sock):
        self.sock, self.closed = sock, False

    def write(self, data):
        self.sock.sendall(data)

    def close(self):
        self.closed = True

    def pause_reading(self):
        pass

    resume_reading = abort = pause_reading


class _Bounded:
    """An executor that runs the call in the calling (the connection's) thread, at most
    ``n`` at once (``--rest_api_num_threads``)."""

    def __init__(self, n):
        self._slots = threading.BoundedSemaphore(n)

    def submit(self, fn, *args):
        with self._slots:
            fn(*args)

    def shutdown(self, wait=True):
        pass


def _raise_fd_limit(connections):
    """Raise the soft open-file limit toward the hard one so ``connections`` fit; returns
    how many connections do fit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = connections + _SPARE_FDS
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
            soft = new
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY:
        return connections
    return max(1, min(connections, soft - _SPARE_FDS))


class Front:
    """The REST port on ``host:port``; each request goes to ``respond(method, target, body,
    reply, pool)`` (``rest_api.RestApi.respond``)."""

    def __init__(self, respond, host, port, event_loop, limits=None):
        self.respond, self.limits = respond, limits or Limits()
        self.limits.max_connections = _raise_fd_limit(self.limits.max_connections)
        self.budget = Budget(self.limits.max_buffered_bytes)
        self.connections, self.thread_id = set(), None
        self.sock = socket.create_server((host, port), backlog=_BACKLOG)
        self.server_address = self.sock.getsockname()
        self._stopping = threading.Event()
        self.loop, self.pool = None, _Bounded(self.limits.threads)
        if event_loop:
            # Model calls that are not batched (e.g. the metadata signature).
            self.pool = ThreadPoolExecutor(max_workers=self.limits.threads,
                                           thread_name_prefix="rest")
            self.loop = asyncio.new_event_loop()
            self.aserver = self.loop.run_until_complete(self.loop.create_server(
                lambda: Connection(self), sock=self.sock, backlog=_BACKLOG,
                start_serving=False))

    def serve(self):
        """Serve from this thread until ``stop``."""
        self.thread_id = threading.get_ident()
        if self.loop is None:
            return self._accept()
        asyncio.set_event_loop(self.loop)
        self.loop.create_task(self.aserver.start_serving())
        self.loop.call_soon(self._sweep)
        try:
            self.loop.run_forever()
        finally:
            self.aserver.close()
            for connection in list(self.connections):
                if connection.transport is not None:
                    connection.transport.abort()
            self.loop.run_until_complete(asyncio.sleep(0))
            self.loop.close()

    def _sweep(self):
        """The event loop's deadlines (a thread's recv times out instead): slow and idle
        clients must not hold file descriptors forever."""
        now = time.monotonic()
        for connection in list(self.connections):
            if connection.wait_s(now) <= 0:
                connection.expire()
        period = min(self.limits.timeout_s, self.limits.idle_s) / 4
        self.loop.call_later(min(max(period, 0.01), 1.0), self._sweep)

    def _accept(self):
        self.sock.settimeout(0.5)  # how soon stop() is noticed
        while not self._stopping.is_set():
            try:
                sock, _ = self.sock.accept()
            except socket.timeout:  # TimeoutError from 3.10; a plain OSError subclass on 3.9
                continue
            except OSError:
                return
            sock.settimeout(None)
            connection, transport = Connection(self), _SocketTransport(sock)
            connection.connection_made(transport)  # counted here: the cap holds at once
            if connection.transport is None:  # over the cap: answered 503 and closed
                _close(sock)
                continue
            threading.Thread(target=self._serve_socket, args=(sock, connection, transport),
                             daemon=True).start()

    def _serve_socket(self, sock, connection, transport):
        # Without TCP_NODELAY, Nagle's algorithm and delayed ACKs add ~40 ms to small replies.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while not transport.closed:
                wait = connection.wait_s(time.monotonic())
                if wait <= 0:
                    connection.expire()
                    break
                sock.settimeout(wait)
                try:
                    data = sock.recv(1 << 16)
                except socket.timeout:
                    continue  # the deadline is checked at the top
                if not data:
                    connection.eof_received()
                    break
                connection.data_received(data)
        except OSError:  # reset by the client
            pass
        finally:
            connection.connection_lost(None)
            _close(sock)

    def stop(self):
        self._stopping.set()
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self.loop.stop)

    def close(self):
        if self.loop is not None:
            if not self.loop.is_closed() and self.thread_id is None:
                self.aserver.close()
                self.loop.close()
            self.pool.shutdown(wait=False)
        self.sock.close()


def _close(sock):
    try:
        sock.shutdown(socket.SHUT_WR)  # the answer goes out before the close
    except OSError:
        pass
    sock.close()
