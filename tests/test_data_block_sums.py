import numpy as np
import pytest

from labquake_tf.data import block_sums as bs


def _reference(x, hop):
    w = x.astype(np.int64).reshape(-1, hop, x.shape[1])
    return np.stack([w.sum(axis=1), (w * w).sum(axis=1)], axis=1)


def _run(x, hop, lo=0, hi=None):
    hi = len(x) // hop if hi is None else hi
    out = np.full((len(x) // hop, 2, x.shape[1]), -1, np.int64)
    bs.block_sums(x, hop, out, lo, hi)
    return out


# 1 channel: the contiguous kernel; 3 and 5: lanes that are not a power of two, rows
# left over after the last whole set of lanes; uint16 / int8 / big-endian int16.
@pytest.mark.parametrize("n_ch,dtype", [(1, "<i2"), (2, "<i2"), (3, "<i2"), (5, "<u2"),
                                        (4, "i1"), (2, ">i2"), (1, "<i4")])
def test_exact_integer_sums_on_both_paths(n_ch, dtype, monkeypatch):
    info = np.iinfo(np.dtype(dtype))
    x = np.random.default_rng(n_ch).integers(info.min, int(info.max) + 1, (7 * 333, n_ch))
    x = x.astype(dtype)
    x[::5] = info.min  # full scale: squares of 2**15 need int64
    ref = _reference(x, 333)
    np.testing.assert_array_equal(_run(x, 333), ref)
    got = _run(x, 333, 2, 5)  # a thread's share writes only its rows
    np.testing.assert_array_equal(got[2:5], ref[2:5])
    assert (got[:2] == -1).all() and (got[5:] == -1).all()
    monkeypatch.setattr(bs, "numba", None)  # the numpy path, same integers
    np.testing.assert_array_equal(_run(x, 333), ref)


def test_fast_kernel_is_used_where_numba_is_installed():
    pytest.importorskip("numba", reason="numba absent: the numpy path is tested above")
    assert bs.has_fast_kernel(np.int16) and bs.has_fast_kernel(np.uint8)
    assert not bs.has_fast_kernel(np.float32) and not bs.has_fast_kernel(np.int32)
