import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from labquake_tf import cli
from labquake_tf.data import pipeline, prepare
from labquake_tf.data.scaling import MinMaxScaler


@pytest.fixture(scope="module")
def p4581_dir(dds_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards") / "p4581"
    assert cli.main(["prepare", "--dataset", "p4581", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory):
    """Shards of the simulator's DDS-like record: for the tests that need some prepared
    data, not the public records (they run offline)."""
    out = tmp_path_factory.mktemp("shards") / "sim"
    prepare.prepare("synthetic-dds", out, seq_len=64)
    return out


def _numpy_windows(arrays, manifest, seq_len, names):
    fs = MinMaxScaler.from_dict(manifest["scaler"]["features"])
    ts = MinMaxScaler.from_dict(manifest["scaler"]["targets"]).select(names)
    # A window enters when its last step is a label for every requested target; the
    # steps before the split are its inputs (context), never its labels.
    k = len(arrays["context"])
    features = np.concatenate([arrays["context"], arrays["features"]])
    ends = [t for t in range(max(0, seq_len - 1 - k), len(arrays["time"]))
            if all(arrays["label_mask"][n][t] for n in names)]
    x = np.stack([fs.transform(features[k + t - seq_len + 1:k + t + 1]) for t in ends])
    y = ts.transform(np.stack([arrays["targets"][n] for n in names], axis=1)[ends])
    return x, y


def _sorted_rows(x, y):
    rows = np.concatenate([x.reshape(len(x), -1), y], axis=1)
    return rows[np.lexsort(rows.T[::-1])]


def _collect(ds):
    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in ds])
    return np.concatenate(xs), np.concatenate(ys)


def test_prepare_p4581_end_to_end(p4581_dir):
    manifest = json.loads((p4581_dir / "manifest.json").read_text())
    assert manifest["n_events"] == 31
    assert {n: s["events"] for n, s in manifest["splits"].items()} == {"train": 22, "val": 3, "test": 6}
    events = np.array(manifest["events"])
    # Each split after the first starts on the step after an event's end.
    for name in ("val", "test"):
        start = manifest["splits"][name]["step_range"][0]
        assert start - 1 in events[:, 1]
    assert manifest["splits"]["train"]["step_range"][1] == manifest["splits"]["val"]["step_range"][0]
    assert manifest["feature_names"] == ["logvar_ch1"] and manifest["dt"] == pytest.approx(0.1)
    assert manifest["processing"]["lowpass_applied"] is False
    assert manifest["sources"][0]["sha256"].startswith("29c95398")
    for split in manifest["splits"].values():
        for shard in split["shards"]:
            assert (p4581_dir / shard["file"]).stat().st_size == shard["bytes"]


@pytest.mark.parametrize("split,seq_len,names", [("train", None, None), ("test", 7, ["ttsf"])])
def test_windows_match_direct_numpy_windowing(synthetic_dir, split, seq_len, names):
    manifest = pipeline.load_manifest(synthetic_dir)
    arrays = pipeline.split_arrays(synthetic_dir, split)
    seq = seq_len or manifest["seq_len"]
    x_ref, y_ref = _numpy_windows(arrays, manifest, seq, names or manifest["target_names"])
    ds = pipeline.make_dataset(synthetic_dir, split, seq_len=seq_len, targets=names,
                               batch_size=100)
    x, y = _collect(ds)
    assert x.shape == x_ref.shape == (len(x_ref), seq, 1)
    # The length is known up front (Keras ends epochs on it) and is the real one.
    assert int(ds.cardinality()) == -(-len(x_ref) // 100)
    dropped = pipeline.make_dataset(synthetic_dir, split, seq_len=seq_len, targets=names,
                                    batch_size=100, drop_remainder=True)
    assert int(dropped.cardinality()) == len(x_ref) // 100 == sum(1 for _ in dropped)
    np.testing.assert_allclose(x, x_ref, atol=1e-6)
    np.testing.assert_allclose(y, y_ref, atol=1e-6)


def test_split_arrays_are_physical_units(p4581_dir, dds_dir):
    arrays = pipeline.split_arrays(p4581_dir, "train")
    rows = np.genfromtxt(dds_dir / "p4581.csv", delimiter=",", skip_header=1)
    n = len(arrays["time"])
    np.testing.assert_allclose(arrays["time"], rows[:n, 4])
    np.testing.assert_allclose(arrays["features"][:, 0], np.log10(rows[:n, 5]), rtol=1e-6)
    assert arrays["events"].shape == (22, 2) and arrays["events"][0, 0] == 11


def test_shuffle_is_seeded_and_a_permutation(synthetic_dir):
    kw = dict(seq_len=5, targets="shear_stress", batch_size=1 << 16, shuffle=True)
    a = next(iter(pipeline.make_dataset(synthetic_dir, "val", seed=3, **kw)))[1].numpy()
    b = next(iter(pipeline.make_dataset(synthetic_dir, "val", seed=3, **kw)))[1].numpy()
    c = next(iter(pipeline.make_dataset(synthetic_dir, "val", seed=4, **kw)))[1].numpy()
    plain = _collect(pipeline.make_dataset(synthetic_dir, "val", seq_len=5,
                                           targets="shear_stress"))[1]
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    np.testing.assert_array_equal(np.sort(a, axis=0), np.sort(plain, axis=0))


def test_many_small_shards_give_the_same_windows(tmp_path):
    out = tmp_path / "small"
    prepare.prepare("synthetic-dds", out, seq_len=20, targets=["ttef"], chunk_len=500,
                    records_per_shard=3, split="0.5,0.1,0.4")
    manifest = pipeline.load_manifest(out)
    assert len(manifest["splits"]["train"]["shards"]) > 3
    arrays = pipeline.split_arrays(out, "train")
    x_ref, y_ref = _numpy_windows(arrays, manifest, 20, ["ttef"])
    x, y = _collect(pipeline.make_dataset(out, "train", batch_size=256))
    # Interleaving shards changes the order of windows, not the windows. Rounded before
    # sorting: the last bit of float32 scaling would otherwise reorder near-equal rows.
    np.testing.assert_allclose(_sorted_rows(np.round(x, 4), np.round(y, 4)),
                               _sorted_rows(np.round(x_ref, 4), np.round(y_ref, 4)), atol=2e-4)


def test_prepare_refuses_to_overwrite_a_different_dir(p4581_dir, tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="--force"):
        prepare.prepare("p4581", out)
    assert (out / "notes.txt").exists()
    # The same request again is a no-op returning the existing manifest.
    manifest = prepare.prepare("p4581", p4581_dir)
    assert manifest["n_events"] == 31


def test_a_split_shorter_than_one_window_fails_and_writes_nothing(dds_dir, tmp_path):
    out = tmp_path / "short"
    with pytest.raises(ValueError, match="split 'val' has 326 steps, shorter than one window"):
        prepare.prepare("p4581", out, seq_len=400)
    assert not out.exists() and not [p for p in os.listdir(tmp_path) if p.startswith(".prepare")]


def test_bad_requests_name_the_problem(synthetic_dir, tmp_path):
    with pytest.raises(ValueError, match="exceeds the prepared seq_len"):
        pipeline.make_dataset(synthetic_dir, "train", seq_len=1000)
    with pytest.raises(ValueError, match="not prepared"):
        pipeline.make_dataset(synthetic_dir, "train", targets=["friction"])
    with pytest.raises(ValueError, match="no split 'holdout'"):
        pipeline.make_dataset(synthetic_dir, "holdout")
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        pipeline.make_dataset(tmp_path, "train")
    with pytest.raises(ValueError, match="unknown target"):
        prepare.prepare("p4581", tmp_path / "x", targets=["friction"])


@pytest.fixture
def broken_copy(synthetic_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(synthetic_dir, copy)
    return copy


def test_missing_shard_is_named(broken_copy):
    (broken_copy / "val-00000.tfrecord").unlink()
    with pytest.raises(FileNotFoundError, match="val-00000.tfrecord"):
        pipeline.make_dataset(broken_copy, "val")


def test_corrupt_shard_is_named(broken_copy):
    path = broken_copy / "train-00000.tfrecord"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="train-00000.tfrecord.*does not match the manifest"):
        pipeline.make_dataset(broken_copy, "train")


def test_manifest_not_matching_shards_is_named(broken_copy):
    manifest = json.loads((broken_copy / "manifest.json").read_text())
    manifest["feature_names"] = ["logvar_ch1", "logvar_ch2"]
    manifest["scaler"]["features"] = {"min": [0, 0], "max": [1, 1], "names": None}
    (broken_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(tf.errors.InvalidArgumentError, match="features width.*val-00000.tfrecord"):
        _collect(pipeline.make_dataset(broken_copy, "val"))


def test_nan_in_shard_features_is_named(synthetic_dir, tmp_path):
    import tensorflow as tf  # noqa: F811

    out = tmp_path / "nan"
    shutil.copytree(synthetic_dir, out)
    manifest = json.loads((out / "manifest.json").read_text())
    shard = manifest["splits"]["val"]["shards"][0]
    path = out / shard["file"]
    records = [tf.train.Example.FromString(r.numpy()) for r in tf.data.TFRecordDataset(str(path))]
    feats = records[0].features.feature["features"].bytes_list
    x = np.frombuffer(feats.value[0], "<f4").copy()
    x[3] = np.nan
    feats.value[0] = x.tobytes()
    with tf.io.TFRecordWriter(str(path)) as w:
        for r in records:
            w.write(r.SerializeToString())
    from labquake_tf.data.checks import sha256
    shard.update(bytes=path.stat().st_size, sha256=sha256(path))
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(tf.errors.InvalidArgumentError, match="NaN or inf.*val-00000"):
        _collect(pipeline.make_dataset(out, "val"))


def test_prepare_std_features_carry_their_kind(synthetic_dir, tmp_path):
    out = tmp_path / "std"
    assert cli.main(["prepare", "--dataset", "synthetic-dds", "--out", str(out), "--seq-len",
                     "64", "--features", "std"]) == 0
    std, logvar = (pipeline.load_manifest(d) for d in (out, synthetic_dir))
    assert std["feature_names"] == ["std_ch1"] and std["feature_kind"] == "std"
    assert std["units"]["features"] == "AE standard deviation"
    assert logvar["feature_kind"] == "logvar" and logvar["feature_names"] == ["logvar_ch1"]
    # the same train part: the min-max range is the logvar one through sqrt(10 ** x)
    for end in ("min", "max"):
        np.testing.assert_allclose(std["scaler"]["features"][end],
                                   10.0 ** (np.asarray(logvar["scaler"]["features"][end]) / 2),
                                   rtol=1e-5)
    assert std["scaler"]["targets"] == logvar["scaler"]["targets"]
