import threading
import time

import numpy as np
import pytest
import tensorflow as tf

from test_serving_export import TARGETS, raw_windows, shared_export

from labquake_tf.serving import Client
from labquake_tf.serving.batching import Batcher, QueueFullError
from labquake_tf.serving.server import Server


class Recorder:
    """A model stand-in: row sums, and a log of the batch sizes it was called with."""

    def __init__(self, gate=None):
        self.sizes, self.gate, self.entered = [], gate, threading.Event()

    def __call__(self, feeds):
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(10)
        x = feeds["x"]
        self.sizes.append(len(x))
        return {"sum": x.reshape(len(x), -1).sum(axis=1), "constant": np.float32(7)}


def concurrently(fn, args):
    results, errors = [None] * len(args), []

    def worker(i):
        try:
            results[i] = fn(args[i])
        except Exception as e:
            errors.append(e)
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(args))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    return results, errors


def test_concurrent_calls_merge_pad_and_split_back():
    gate = threading.Event()
    model = Recorder(gate)
    batcher = Batcher(model, max_batch_size=8, batch_timeout_micros=200_000,
                      num_batch_threads=1, allowed_batch_sizes=[4, 8])
    feeds = [{"x": np.full((1, 3), i, np.float32)} for i in range(6)]
    try:
        threading.Timer(0.3, gate.set).start()
        results, errors = concurrently(batcher, feeds)
    finally:
        batcher.close()
    assert errors == []
    # Each caller gets its own row back; un-batched outputs (a scalar) go to everyone.
    assert [r["sum"].tolist() for r in results] == [[3.0 * i] for i in range(6)]
    assert all(r["constant"] == 7 for r in results)
    # 6 rows in at most two model calls, each padded to an allowed size.
    assert sum(model.sizes) >= 6 and len(model.sizes) <= 2 and set(model.sizes) <= {4, 8}
    assert batcher.batches == len(model.sizes)


def wait_for(condition, seconds=10):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_oversized_requests_are_split_and_queue_overflow_is_refused():
    gate = threading.Event()
    model = Recorder(gate)
    batcher = Batcher(model, max_batch_size=2, batch_timeout_micros=0, num_batch_threads=1,
                      max_enqueued_batches=1)
    two = {"x": np.ones((2, 2), np.float32)}
    threads = [threading.Thread(target=batcher, args=(two,)) for _ in range(2)]
    try:
        gate.set()
        # > max_batch_size: max_batch_size pieces, answers in order, per-row outputs joined
        x = np.arange(10, dtype=np.float32).reshape(5, 2)
        out = batcher({"x": x})
        assert out["sum"].tolist() == [1.0, 5.0, 9.0, 13.0, 17.0] and model.sizes == [2, 2, 1]
        assert out["constant"] == 7  # not per row: one copy, not three
        gate.clear()
        model.entered.clear()
        threads[0].start()  # the batch thread takes it and holds inside the model
        wait_for(model.entered.is_set)
        threads[1].start()  # fills the queue: max_enqueued_batches (1) x max_batch_size (2)
        wait_for(lambda: batcher._queued_rows == 2)
        with pytest.raises(QueueFullError, match="queue .* is full"):
            batcher({"x": np.ones((1, 2), np.float32)})
    finally:
        gate.set()
        for t in threads:
            t.join(10)
        batcher.close()
    assert model.sizes == [2, 2, 1, 2, 2]


def test_errors_reach_every_caller_of_the_batch_and_shapes_do_not_mix():
    def failing(feeds):
        raise RuntimeError("model broke")

    batcher = Batcher(failing, max_batch_size=4, num_batch_threads=1)
    try:
        _, errors = concurrently(batcher, [{"x": np.ones((1, 2), np.float32)}] * 3)
    finally:
        batcher.close()
    assert len(errors) == 3 and all("model broke" in str(e) for e in errors)

    model = Recorder()
    batcher = Batcher(model, max_batch_size=8, batch_timeout_micros=100_000, num_batch_threads=1)
    try:
        results, errors = concurrently(batcher, [{"x": np.ones((1, 2), np.float32)},
                                                 {"x": np.ones((1, 3), np.float32)}])
    finally:
        batcher.close()
    assert errors == [] and [r["sum"].tolist() for r in results] == [[2.0], [3.0]]
    assert sorted(model.sizes) == [1, 1]  # a (1, 2) and a (1, 3) never share a call


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    base = shared_export(tmp_path_factory)[1].parent
    batching = {"max_batch_size": 16, "batch_timeout_micros": 20_000, "num_batch_threads": 2,
                "max_enqueued_batches": 100, "allowed_batch_sizes": [4, 8, 16]}
    with Server(base, port=0) as plain, Server(base, port=0, batching=batching) as batched:
        yield plain, batched


def test_batched_answers_are_bitwise_the_unbatched_ones(servers):
    plain, batched = servers
    windows = [raw_windows(1, seed=s) for s in range(48)]
    # The unbatched server's answers, one request at a time.
    want = [Client(plain.url, "tiny").predict(w) for w in windows]
    client = Client(batched.url, "tiny", retries=0)
    calls_before = batched.registry.get()._batchers["serving_default"].batches
    got, errors = concurrently(client.predict, windows)
    calls = batched.registry.get()._batchers["serving_default"].batches - calls_before
    assert errors == []
    for g, w in zip(got, want):
        for name in TARGETS:
            np.testing.assert_array_equal(g[name], w[name])
    assert calls < len(windows)  # requests were merged
    # And both equal the SavedModel itself (to float32 rounding of a batch of one).
    fn = tf.saved_model.load(str(plain.registry.get().path)).signatures["serving_default"]
    direct = fn(ae_features=tf.constant(np.concatenate(windows)))
    np.testing.assert_array_equal(np.concatenate([g["ttsf"] for g in got]),
                                  direct["ttsf"].numpy())


def test_a_request_over_max_batch_size_is_split_and_answers_as_unbatched(servers):
    plain, batched = servers
    windows = raw_windows(37, seed=5)  # 16 + 16 + 5 rows, each piece padded to 16, 16, 8
    batcher = batched.registry.get()._batchers["serving_default"]
    calls_before = batcher.batches
    got = Client(batched.url, "tiny", retries=0).predict(windows)
    want = Client(plain.url, "tiny").predict(windows)
    assert batcher.batches - calls_before == 3
    for name in TARGETS:
        np.testing.assert_array_equal(got[name], want[name])


@pytest.mark.parametrize("batching,sizes", [
    ({"max_batch_size": 16, "allowed_batch_sizes": [4, 8, 16]}, {4, 8, 16}),
    ({"max_batch_size": 5}, {1, 2, 3, 4, 5})])
def test_warmup_runs_every_batch_size_the_batcher_can_form(tmp_path_factory, monkeypatch,
                                                           batching, sizes):
    from labquake_tf.serving.servable import Signature

    base = shared_export(tmp_path_factory)[1].parent
    seen, run = [], Signature.run
    monkeypatch.setattr(Signature, "run", lambda self, feeds: seen.append(
        len(next(iter(feeds.values())))) or run(self, feeds))
    with Server(base, port=None, batching={"batch_timeout_micros": 0, **batching}):
        pass
    assert set(seen) == sizes  # the records' own sizes (1, 8) arrive padded, or as they are
