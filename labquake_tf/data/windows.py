"""Model inputs cut from a series, in numpy: the windows of ``seq_len`` steps ending at
given steps. ``pipeline.make_dataset`` cuts the same windows in the tf.data graph."""

import numpy as np


def cut(x, ends, seq_len):
    """``(len(ends), seq_len, n_features)`` windows of ``x`` (n_steps, n_features), window
    ``i`` ending at step ``ends[i]`` (inclusive), as a contiguous array. ``ends=None``: every
    full window (ending at ``seq_len - 1``, ``seq_len``, ...) as a view, no copy."""
    x = np.asarray(x)
    if x.ndim != 2 or len(x) < seq_len:
        raise ValueError(f"windows.cut: x must be (n_steps >= {seq_len}, n_features), "
                         f"got {x.shape}")
    # sliding_window_view puts the window axis last: (n, n_features, seq_len).
    view = np.lib.stride_tricks.sliding_window_view(x, seq_len, axis=0).transpose(0, 2, 1)
    if ends is None:
        return view
    ends = np.asarray(ends, np.int64)
    if ends.size and (ends.min() < seq_len - 1 or ends.max() >= len(x)):
        raise ValueError(f"windows.cut: window ends must lie in [{seq_len - 1}, {len(x) - 1}], "
                         f"got [{ends.min()}, {ends.max()}]")
    return np.ascontiguousarray(view[ends - seq_len + 1])
