import shutil

import numpy as np
import pytest

from labquake_tf.data import registry


def test_named_dds_records(dds_dir):
    record = registry.load_record("p5198")
    assert record.name == "p5198" and len(record.events) == 46
    assert record.sha256 == registry.DATASETS["p5198"]["sha256"]
    assert registry.dataset_path("p4581").name == "p4581.csv"


def test_hash_mismatch_is_an_error(dds_dir, tmp_path, monkeypatch):
    bad = tmp_path / "p4581.csv"
    shutil.copy(dds_dir / "p4581.csv", bad)
    with open(bad, "a") as f:
        f.write("\n")
    monkeypatch.setenv("LABQUAKE_DATA_DIR", str(tmp_path))
    with pytest.raises(ValueError, match=r"p4581.csv: sha256 .* does not match"):
        registry.load_record("p4581")
    with pytest.raises(FileNotFoundError, match=r"p5198.csv: not found \(LABQUAKE_DATA_DIR"):
        registry.dataset_path("p5198")


def test_offline_download_says_to_set_the_data_dir(tmp_path, monkeypatch):
    import keras

    def offline(*args, **kwargs):  # what keras.utils.get_file raises without a network
        raise Exception("URL fetch failure on https://example: None -- [Errno -3] Temporary "
                        "failure in name resolution")

    monkeypatch.delenv("LABQUAKE_DATA_DIR", raising=False)
    monkeypatch.setenv("LABQUAKE_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(keras.utils, "get_file", offline)
    with pytest.raises(ValueError, match=r"^p4581: download from https://\S+ failed \(URL fetch "
                       r"failure .*\); offline, set LABQUAKE_DATA_DIR to a folder holding "
                       r"p4581.csv$"):
        registry.dataset_path("p4581")


def test_unknown_names_and_paths():
    with pytest.raises(ValueError, match="unknown dataset 'p9999'"):
        registry.dataset_path("p9999")
    with pytest.raises(FileNotFoundError, match="neither a file nor a dataset name"):
        registry.load_record("p9999")


def test_synthetic_is_generated_once_and_cached(tmp_path, monkeypatch):
    simulate = pytest.importorskip("labquake_tf.simulate")
    monkeypatch.setenv("LABQUAKE_CACHE_DIR", str(tmp_path))
    monkeypatch.setitem(registry.DATASETS, "synthetic-tiny",
                        {"kind": "synthetic", "preset": "dds", "duration": 20.0})
    calls = []
    real = simulate.generate
    monkeypatch.setattr(simulate, "generate", lambda **kw: calls.append(kw) or real(**kw))
    record = registry.load_record("synthetic-tiny")
    again = registry.load_record("synthetic-tiny")
    assert len(calls) == 1 and calls[0]["mode"] == "features" and calls[0]["seed"] == 0
    path = registry.dataset_path("synthetic-tiny")
    assert path.name.startswith("dds-20s-seed0-v0.1.0-") and path.suffix == ".h5"
    assert path.parent == tmp_path / "synthetic"
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp left behind
    np.testing.assert_array_equal(record.features, again.features)
    assert record.name == "synthetic-tiny" and len(record.events) >= 1
    # An edited preset is a new record, never the cached one.
    edited = simulate.PRESETS["dds"].replace(stiffness=0.003)
    monkeypatch.setitem(simulate.PRESETS, "dds", edited)
    other = registry.dataset_path("synthetic-tiny")
    assert other != path and other.name.startswith("dds-20s-seed0-v0.1.0-") and len(calls) == 2
