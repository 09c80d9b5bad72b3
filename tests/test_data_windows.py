import numpy as np
import pytest

from labquake_tf.data.windows import cut


def test_cut_windows_end_at_the_given_steps():
    x = np.arange(20, dtype=np.float32).reshape(10, 2)  # step i holds (2i, 2i + 1)
    w = cut(x, [2, 9], 3)
    assert w.shape == (2, 3, 2) and w.flags.c_contiguous
    np.testing.assert_array_equal(w[0], x[0:3])
    np.testing.assert_array_equal(w[1], x[7:10])
    every = cut(x, None, 3)
    assert every.shape == (8, 3, 2) and np.shares_memory(every, x)
    np.testing.assert_array_equal(every, cut(x, np.arange(2, 10), 3))


def test_cut_rejects_ends_without_a_full_window():
    x = np.zeros((10, 2), np.float32)
    with pytest.raises(ValueError, match=r"\[2, 9\], got \[1, 1\]"):
        cut(x, [1], 3)
    with pytest.raises(ValueError, match=r"got \[10, 10\]"):
        cut(x, [10], 3)
    with pytest.raises(ValueError, match="n_steps >= 11"):
        cut(x, None, 11)
