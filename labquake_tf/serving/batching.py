"""Server-side batching as TF Serving does it (``--enable_batching``).

Concurrent requests to one signature queue up; a batch thread takes as many as fit in
``max_batch_size`` rows (waiting up to ``batch_timeout_micros`` for the batch to fill),
pads the rows to the next of ``allowed_batch_sizes`` with copies of the first row, runs
the model once and hands each request its own rows back. A row's answer does not depend
on the rows beside it (inference mode: BatchNorm uses its moving statistics, convolutions
and dense layers are per example), so batched answers equal unbatched ones bit for bit.
"""

import collections
import threading
import time

import numpy as np


class QueueFullError(RuntimeError):
    """More rows waiting than ``max_enqueued_batches * max_batch_size``."""


class _Task:
    __slots__ = ("feeds", "rows", "key", "done")

    def __init__(self, feeds, rows, done):
        self.feeds, self.rows, self.done = feeds, rows, done
        # Only requests whose non-batch dimensions agree can share a batch.
        self.key = tuple((k, v.shape[1:], v.dtype.str) for k, v in sorted(feeds.items()))


class Batcher:
    """Merges concurrent ``run(feeds)`` calls; ``feeds`` are ``{name: array}`` with the
    batch on axis 0, ``run`` returns ``{name: array}`` the same way."""

    def __init__(self, run, max_batch_size=1000, batch_timeout_micros=0, num_batch_threads=1,
                 max_enqueued_batches=10, allowed_batch_sizes=(), name="batcher"):
        self.run = run
        self.max_batch_size = int(max_batch_size)
        self.timeout = batch_timeout_micros / 1e6
        self.max_queued_rows = int(max_enqueued_batches) * self.max_batch_size
        self.allowed = sorted(allowed_batch_sizes) or None
        self._cv = threading.Condition()
        self._queue = collections.deque()
        self._queued_rows = 0
        self._closed = False
        self.batches = 0  # model calls made, for tests and metrics
        self._threads = [threading.Thread(target=self._loop, name=f"{name}-{i}", daemon=True)
                         for i in range(int(num_batch_threads))]
        for t in self._threads:
            t.start()

    def __call__(self, feeds):
        """The outputs for ``feeds``, waiting for their batch."""
        # A bare lock wakes the caller with less work under the GIL than an Event.
        waiting, answer = threading.Lock(), []
        waiting.acquire()
        self.submit(feeds, lambda outputs, error: (answer.append((outputs, error)),
                                                   waiting.release()))
        waiting.acquire()
        outputs, error = answer[0]
        if error is not None:
            raise error
        return outputs

    def submit(self, feeds, done):
        """Queue ``feeds`` without waiting: ``done(outputs, None)`` or ``done(None, error)``
        is called once, from a batch thread (an event loop's requests need no thread each)."""
        rows = len(next(iter(feeds.values())))
        # Larger requests go in max_batch_size pieces, as TF Serving's
        # enable_large_batch_splitting does; each piece batches like any request.
        step = self.max_batch_size
        if rows > step:
            done = _Joined(done, -(-rows // step))
            tasks = [_Task({k: v[i:i + step] for k, v in feeds.items()}, min(step, rows - i),
                           done.part(i // step, min(step, rows - i))) for i in range(0, rows, step)]
        else:
            tasks = [_Task(feeds, rows, done)]
        with self._cv:
            closed = self._closed
            # (An empty queue takes any request: one larger than the whole queue still runs.)
            if not closed and self._queued_rows and \
                    self._queued_rows + rows > self.max_queued_rows:
                raise QueueFullError("The batch scheduling queue to which this task was "
                                     "submitted is full")
            if not closed:
                self._queue.extend(tasks)
                self._queued_rows += rows
                self._cv.notify(len(tasks))
        if closed:  # the version is being unloaded: finish this one directly
            run_then(self.run, feeds, done)

    def sizes(self, most=128):
        """The batch sizes this batcher runs the model with (``allowed_batch_sizes``, else
        every size up to ``max_batch_size``, at most ``most`` of them), for warmup: a
        shape TF has not run yet costs a few ms more the first time."""
        if self.allowed:
            return [s for s in self.allowed if s <= self.max_batch_size]
        return list(range(1, min(self.max_batch_size, most) + 1))

    def _take(self):
        """The next batch (a list of tasks with one key), or None once closed and drained."""
        with self._cv:
            while not self._queue:
                if self._closed:
                    return None
                self._cv.wait()
            deadline = time.monotonic() + self.timeout
            while not self._closed and self._queued_rows < self.max_batch_size:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cv.wait(left)
            if not self._queue:  # another batch thread took them meanwhile
                return []
            key, batch, rows, skipped = self._queue[0].key, [], 0, []
            while self._queue and rows + self._queue[0].rows <= self.max_batch_size:
                task = self._queue.popleft()
                if task.key == key:
                    batch.append(task)
                    rows += task.rows
                else:
                    skipped.append(task)
            self._queue.extendleft(reversed(skipped))
            self._queued_rows -= rows
            return batch

    def _loop(self):
        while True:
            batch = self._take()
            if batch is None:
                return
            if batch:
                self._run_batch(batch)

    def _run_batch(self, batch):
        rows = sum(t.rows for t in batch)
        size = rows
        if self.allowed:
            size = next(s for s in self.allowed if s >= rows)
        try:
            feeds = {}
            for name in batch[0].feeds:
                parts = [t.feeds[name] for t in batch]
                if size > rows:  # pad with the first row, as TF Serving does
                    parts.append(np.repeat(parts[0][:1], size - rows, axis=0))
                feeds[name] = np.concatenate(parts)
            outputs = self.run(feeds)
            self.batches += 1
        except Exception as e:  # every request of the batch gets the error
            for t in batch:
                t.done(None, e)
            return
        start = 0
        for t in batch:
            t.done({k: v[start:start + t.rows] if np.ndim(v) and len(v) == size else v
                    for k, v in outputs.items()}, None)
            start += t.rows

    def close(self):
        """Finish what is queued, then stop the batch threads."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        for t in self._threads:
            t.join(timeout=30)


def run_then(run, feeds, done):
    """``done(run(feeds), None)``, or ``done(None, error)`` if ``run`` raises."""
    try:
        outputs = run(feeds)
    except Exception as e:
        return done(None, e)
    done(outputs, None)


class _Joined:
    """The pieces of a split request, joined back into one answer for ``done``."""

    def __init__(self, done, parts):
        self.done, self.results, self.left = done, [None] * parts, parts
        self.lock, self.error = threading.Lock(), None

    def part(self, i, rows):
        def piece_done(outputs, error):
            with self.lock:
                self.results[i] = outputs, rows
                self.error = self.error or error
                self.left -= 1
                last = self.left == 0
            if not last:
                return
            if self.error is not None:
                return self.done(None, self.error)
            first = self.results[0][0]
            self.done({k: np.concatenate([r[k] for r, _ in self.results])
                       if all(np.ndim(r[k]) and len(r[k]) == n for r, n in self.results)
                       else first[k] for k in first}, None)
        return piece_done
