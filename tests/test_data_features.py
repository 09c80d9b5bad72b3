import numpy as np
import pytest

from labquake_tf.data.features import LogVariance, log_variance


def _reference(x, window, hop, fn=np.var):
    """Direct per-window numpy, in float64."""
    n = (len(x) - window) // hop + 1
    return np.array([fn(x[k * hop:k * hop + window].astype(np.float64), axis=0) for k in range(n)])


# int16: float64 tiles; int32: the int64 path; float32: float64 sums.
@pytest.mark.parametrize("dtype", [np.int16, np.int32, np.float32])
def test_matches_direct_numpy_across_chunk_boundaries(dtype):
    rng = np.random.default_rng(0)
    x = (rng.normal(0, 800, (20_037, 3)) * np.array([1, 3, 0.2])).astype(dtype)
    # Chunk edges inside hop blocks, tiny chunks and an empty one.
    chunks = np.split(x, [7, 7, 1234, 1241, 9000, 15_001])
    got = log_variance(chunks, sample_rate=1000.0, window=0.1, hop=0.01)
    ref = np.log10(_reference(x, 100, 10))
    assert got.shape == ref.shape == (1994, 3) and got.dtype == np.float32
    np.testing.assert_allclose(got, ref, atol=2e-6)


def test_int16_full_scale_is_exact():
    x = np.full((4000, 1), -32768, np.int16)
    x[::2] = 32767  # squares of 2**15 overflow int16/int32 sums: needs int64
    got = log_variance([x[:1500], x[1500:]], 1000.0, window=1.0, hop=0.5, output="var")
    # float32 output; an int32 overflow would be off by orders of magnitude
    np.testing.assert_allclose(got[:, 0], _reference(x, 1000, 500)[:, 0], rtol=1e-7)


def test_int16_block_sums_are_exact_integers():
    x = np.random.default_rng(2).integers(-32768, 32768, (40_000, 2)).astype(np.int16)
    lv = LogVariance(1000.0, window=1.0, hop=1.0, workers=2)
    sums = lv._block_sums(x, 40)
    wide = x.astype(object).reshape(40, 1000, 2)  # Python ints: no rounding at all
    assert sums.dtype == np.int64
    assert sums[:, 0].tolist() == wide.sum(axis=1).tolist()
    assert sums[:, 1].tolist() == (wide * wide).sum(axis=1).tolist()


def test_var_and_std_outputs():
    x = np.random.default_rng(1).integers(-500, 500, (5000, 1)).astype(np.int16)
    var = log_variance(x, 1000.0, 0.2, 0.05, output="var")
    std = log_variance(x, 1000.0, 0.2, 0.05, output="std")
    np.testing.assert_allclose(var, _reference(x, 200, 50), rtol=1e-5)
    np.testing.assert_allclose(std, _reference(x, 200, 50, np.std), rtol=1e-5)


def test_window_end_times_and_streaming_yield():
    lv = LogVariance(sample_rate=100.0, window=0.5, hop=0.1)
    assert lv.update(np.zeros(40, np.int16)).shape == (0, 1)  # no window complete yet
    out = lv.update(np.ones(30, np.int16))
    assert out.shape == (3, 1)  # windows ending at samples 50, 60, 70
    np.testing.assert_allclose(lv.window_end_time(np.arange(3), t0=2.0), [2.5, 2.6, 2.7])


@pytest.mark.parametrize("kwargs,match", [
    (dict(window=0.1, hop=0.03), "multiple of hop"),
    (dict(window=0.1, hop=0.0001), "multiple of hop"),
    (dict(output="rms"), "output must be"),
])
def test_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LogVariance(1000.0, **kwargs)


def test_feature_kinds_and_what_a_manifest_says():
    from labquake_tf.data import features as f

    np.testing.assert_allclose(f.from_variance(np.array([4.0, 100.0]), "std"), [2.0, 10.0])
    np.testing.assert_allclose(f.from_logvar(np.array([2.0, 0.0]), "std"), [10.0, 1.0])
    np.testing.assert_allclose(f.from_variance(np.array([100.0]), "logvar"), [2.0])
    assert f.manifest_kind({"feature_kind": "std", "feature_names": ["std_ch1"]}) == "std"
    assert f.manifest_kind({"feature_names": ["std_ch1", "std_ch2"]}) == "std"
    assert f.manifest_kind({"feature_names": ["logvar_ch1"]}) == "logvar"
    assert f.manifest_kind({}) == "logvar"  # manifests from before feature kinds
    assert f.feature_kind(["std_ch1", "logvar_ch2"]) is None
    with pytest.raises(ValueError, match=r"features must be one of \['logvar', 'std'\], got 'rms'"):
        f.manifest_kind({"feature_kind": "rms"})


def test_chunks_shorter_than_a_window_from_the_start_lose_no_window():
    # Until the first window completes, fewer than window/hop - 1 blocks are carried:
    # all of them must be kept (a negative slice start once dropped the oldest ones).
    x = (np.random.default_rng(5).normal(size=(3000, 1)) * 40).astype(np.int16)
    whole = log_variance(x, 1000.0)
    pieces = log_variance([x[i:i + 37] for i in range(0, len(x), 37)], 1000.0, workers=1)
    assert len(whole) == (3000 - 100) // 10 + 1
    np.testing.assert_array_equal(pieces, whole)
