import keras
import numpy as np
import pytest

from labquake_tf.models import build_tcn
from labquake_tf.streaming.engines import (IncrementalEngine, NotStreamableError, WindowedEngine,
                                           make_engine)


def _randomise(model, seed=0):
    """Weights and BatchNorm statistics off their initial values (variances > 0), the
    outputs of order 1 like scaled targets (so 1e-5 is a tight tolerance)."""
    rng = np.random.default_rng(seed)
    model.set_weights([w * rng.uniform(0.5, 1.5, w.shape) + rng.normal(0, 0.05, w.shape)
                       * (w.ndim == 1) for w in model.get_weights()])
    norm = model.get_layer("input_norm")
    norm.moving_variance.assign(np.abs(norm.moving_variance.numpy()) + 0.5)
    return model


@pytest.fixture(scope="module")
def streamable():
    keras.utils.set_random_seed(0)
    # 2 features (so block 0 has a residual 1x1 conv), 2 targets, dilations 1, 2, 4.
    return _randomise(build_tcn(10, n_features=2, n_targets=2, filters=6, kernel_size=3,
                                blocks=3, dropout=0.1, streamable=True))


def _windows(x, length):
    return np.stack([x[i:i + length] for i in range(len(x) - length + 1)])


def _push_randomly(engine, x, seed, max_chunk):
    rng = np.random.default_rng(seed)
    ends, outs, i = [], [], 0
    while i < len(x):
        n = int(rng.integers(0, max_chunk + 1))  # 0 and 1-step chunks included
        e, o = engine.push(x[i:i + n])
        ends.append(e)
        outs.append(o)
        i += n
    return np.concatenate(ends), np.concatenate(outs)


@pytest.mark.parametrize("seed,max_chunk", [(1, 3), (2, 40), (3, 300)])
def test_both_engines_match_predict_for_any_chunking(streamable, seed, max_chunk):
    x = np.random.default_rng(seed).normal(size=(260, 2)).astype("float32")
    length = streamable.input_shape[1]
    expected = streamable.predict(_windows(x, length), verbose=0)
    for engine in (IncrementalEngine(streamable, max_push=16), WindowedEngine(streamable)):
        ends, out = _push_randomly(engine, x, seed, max_chunk)
        np.testing.assert_array_equal(ends, np.arange(length - 1, len(x)))
        assert 0.1 < np.abs(expected).max() < 10
        assert np.abs(out - expected).max() < 1e-5, type(engine).__name__


def test_reset_forgets_the_stream(streamable):
    engine = IncrementalEngine(streamable)
    x = np.random.default_rng(4).normal(size=(120, 2)).astype("float32")
    engine.push(np.full((80, 2), 7.0, "float32"))
    engine.reset()
    ends, out = engine.push(x)
    length = streamable.input_shape[1]
    assert ends[0] == length - 1
    np.testing.assert_allclose(out, streamable.predict(_windows(x, length), verbose=0), atol=1e-5)


def test_incremental_engine_refuses_a_reference_model_and_bad_steps(streamable):
    reference = build_tcn(10, filters=4, kernel_size=3, blocks=2)
    with pytest.raises(NotStreamableError, match="not a streamable TCN.*windowed engine"):
        IncrementalEngine(reference)
    assert isinstance(make_engine(reference), WindowedEngine)
    assert isinstance(make_engine(streamable), IncrementalEngine)
    with pytest.raises(ValueError, match=r"model takes \(n, 2\)"):
        IncrementalEngine(streamable).push(np.zeros((5, 3)))
    with pytest.raises(ValueError, match="engine must be"):
        make_engine(streamable, "fast")


def test_mixed_float16_model_streams_in_float32(streamable):
    previous = keras.config.dtype_policy()
    try:
        keras.config.set_dtype_policy("mixed_float16")
        mixed = build_tcn(10, n_features=2, n_targets=2, filters=6, kernel_size=3, blocks=3,
                          dropout=0.1, streamable=True)
    finally:
        keras.config.set_dtype_policy(previous)
    mixed.set_weights(streamable.get_weights())
    x = np.random.default_rng(5).normal(size=(80, 2)).astype("float32")
    length = streamable.input_shape[1]
    _, out = IncrementalEngine(mixed).push(x)
    # float32 arithmetic: the float32 model's numbers, not float16's
    np.testing.assert_allclose(out, streamable.predict(_windows(x, length), verbose=0), atol=1e-5)
    assert np.abs(out - mixed.predict(_windows(x, length), verbose=0)).max() < 0.05


def test_incremental_engine_averages_an_ensembles_heads():
    from labquake_tf.models.heads import add_heads, n_members

    # its own model: add_heads shares the trunk, which _randomise then changes
    keras.utils.set_random_seed(1)
    single = build_tcn(10, n_features=2, n_targets=2, filters=6, kernel_size=3, blocks=3,
                       streamable=True)
    ensemble = _randomise(add_heads(single, 3, seed=4), seed=5)
    assert n_members(ensemble) == 3
    x = np.random.default_rng(6).normal(size=(120, 2)).astype("float32")
    length = ensemble.input_shape[1]
    expected = ensemble.predict(_windows(x, length), verbose=0)
    engine = IncrementalEngine(ensemble, max_push=16)
    assert len(engine.heads) == 3
    ends, out = _push_randomly(engine, x, 7, 40)
    np.testing.assert_array_equal(ends, np.arange(length - 1, len(x)))
    # the members differ, so a single head could not pass for their mean
    assert np.abs(IncrementalEngine(single).push(x)[1] - expected).max() > 1e-3
    assert np.abs(out - expected).max() < 1e-5
