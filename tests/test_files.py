import pytest

from labquake_tf.files import atomic_dir, write_json, read_json


def test_atomic_dir_replaces_only_on_success_and_leaves_no_temp(tmp_path):
    out = tmp_path / "run"
    with atomic_dir(out) as work:
        write_json(work / "a.json", {"v": 1})
        assert not out.exists()  # invisible until complete
        assert work.name.startswith(".")
    assert read_json(out / "a.json") == {"v": 1}

    with pytest.raises(RuntimeError):
        with atomic_dir(out) as work:
            write_json(work / "a.json", {"v": 2})
            raise RuntimeError("killed")
    assert read_json(out / "a.json") == {"v": 1}  # the old one stays

    with atomic_dir(out) as work:
        write_json(work / "b.json", {"v": 3})
    assert sorted(p.name for p in out.iterdir()) == ["b.json"]  # replaced whole
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # no temp or old folder left
