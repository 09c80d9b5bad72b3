"""raw_ae: chunked, read-ahead features equal one whole-array pass, any chunking."""

import h5py
import numpy as np
import pytest

from labquake_tf.data import features as features_lib
from labquake_tf.data import raw_ae
from labquake_tf.errors import DataError

RATE = 10_000.0


@pytest.mark.parametrize("rows", [997, 5_000, 40_000])
def test_hdf5_chunked_equals_whole_multichannel(tmp_path, rows):
    x = np.random.default_rng(0).integers(-3000, 3000, (37_123, 3), dtype=np.int16)
    path = tmp_path / "rec.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("ae", data=x, chunks=(1024, 3))
    whole = features_lib.LogVariance(RATE).update(x)
    with h5py.File(path, "r") as f:
        _, got = raw_ae.features(raw_ae.hdf5_chunks(f["ae"], rows, str(path)), RATE, [1, 2, 3])
        _, col2 = raw_ae.features(raw_ae.hdf5_chunks(f["ae"], rows, str(path)), RATE, [2])
    assert got.shape == whole.shape and len(got) > 300
    np.testing.assert_array_equal(got, whole)
    np.testing.assert_array_equal(col2[:, 0], whole[:, 1])


def test_truncated_npy_names_the_file(tmp_path):
    path = tmp_path / "ae.npy"
    np.save(path, np.zeros((50_000, 2), np.int16))
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    with open(path, "rb") as fp:
        chunks, n, n_ch, _ = raw_ae.npy_stream_chunks(fp, 100, str(path))
        assert (n, n_ch) == (50_000, 2)
        with pytest.raises(DataError, match=r"ae\.npy.*truncated"):
            raw_ae.features(chunks, RATE, [1])
