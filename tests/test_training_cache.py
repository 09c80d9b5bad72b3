"""decoder_activations remembers windows per decoder (by its weights), not per call."""

import numpy as np

from labquake_tf.models import build_tcn
from labquake_tf.training import cache


def _trunk(seed=0):
    import keras

    keras.utils.set_random_seed(seed)
    model = build_tcn(12, filters=4, kernel_size=2, blocks=2, dropout=0.0)
    for layer in model.layers:
        layer.trainable = False
    return cache.split_at_head(model)[0]


def test_windows_seen_are_looked_up_and_new_ones_run(monkeypatch):
    cache.forget()
    trunk = _trunk()
    x = np.random.default_rng(0).normal(size=(10, 12, 1)).astype("float32")
    calls = []
    real = trunk.predict
    run = cache.predict_batches  # the one pass through the trunk
    monkeypatch.setattr(cache, "predict_batches",
                        lambda m, w, *a, **kw: calls.append(len(w)) or run(m, w, *a, **kw))
    first = cache.decoder_activations(trunk, x[:6], batch_size=4)
    # a twin's call: half seen (in another order), a duplicate, two new windows
    again = cache.decoder_activations(trunk, x[[5, 1, 1, 8, 9, 3]], batch_size=4)
    assert calls == [6, 2]
    np.testing.assert_array_equal(again[[0, 1, 2, 5]], first[[5, 1, 1, 3]])
    np.testing.assert_allclose(again, real(x[[5, 1, 1, 8, 9, 3]], verbose=0), atol=1e-6)
    assert cache.decoder_activations(trunk, x[:0]).shape == (0, *first.shape[1:])


def test_another_decoder_is_not_answered_from_the_memo():
    cache.forget()
    x = np.random.default_rng(1).normal(size=(5, 12, 1)).astype("float32")
    a = cache.decoder_activations(_trunk(0), x)
    other = _trunk(1)  # same shapes, other weights
    b = cache.decoder_activations(other, x)
    assert not np.allclose(a, b)
    np.testing.assert_allclose(b, other.predict(x, verbose=0), atol=1e-6)
    cache.forget()
