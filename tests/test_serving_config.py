import pytest

from labquake_tf.cli import main, run_command
from labquake_tf.serving.config import models_config, parse_policy


def fake_versions(base, name, *numbers):
    for v in numbers:
        (base / name / str(v)).mkdir(parents=True)
        (base / name / str(v) / "saved_model.pb").write_bytes(b"")


def test_policies_parse():
    assert parse_policy("latest") == ("latest", [1])
    assert parse_policy("latest:3") == ("latest", [3])
    assert parse_policy("all") == ("all", [])
    assert parse_policy("specific:1,4") == ("specific", [1, 4])
    for bad in ("specific", "newest:2", "latest:1,2", "specific:a"):
        with pytest.raises(ValueError, match="policy"):
            parse_policy(bad)


def test_cli_writes_model_config_list(tmp_path, capsys):
    fake_versions(tmp_path, "p4581", 1, 2, 3)
    fake_versions(tmp_path, "p5198", 1, 2)
    assert main(["serving-config", "--base-dir", str(tmp_path), "--model", "p4581",
                 "--model", "p5198", "--policy", "p4581=latest:2",
                 "--policy", "p5198=specific:1,2", "--label", "p5198=stable:1",
                 "--label", "p5198=canary:2"]) == 0
    assert (tmp_path / "models.config").read_text() == '''model_config_list {
  config {
    name: "p4581"
    base_path: "/models/p4581"
    model_platform: "tensorflow"
    model_version_policy {
      latest {
        num_versions: 2
      }
    }
  }
  config {
    name: "p5198"
    base_path: "/models/p5198"
    model_platform: "tensorflow"
    model_version_policy {
      specific {
        versions: 1
        versions: 2
      }
    }
    version_labels {
      key: "canary"
      value: 2
    }
    version_labels {
      key: "stable"
      value: 1
    }
  }
}
'''
    out = capsys.readouterr().out
    assert f'-v "{tmp_path}:/models" tensorflow/serving' in out
    assert "--model_config_file=/models/models.config" in out


def test_local_paths_and_all_policy(tmp_path):
    fake_versions(tmp_path, "m", 4)
    text = models_config([{"name": "m", "base_path": str(tmp_path / "m"), "policy": ("all", [])}])
    assert f'base_path: "{tmp_path / "m"}"' in text and "all {\n      }" in text
    assert main(["serving-config", "--base-dir", str(tmp_path), "--model", "m",
                 "--container-root", "", "--out", str(tmp_path / "local.config")]) == 0
    assert f'base_path: "{(tmp_path / "m").resolve()}"' in (tmp_path / "local.config").read_text()


def test_inconsistent_requests_are_refused_and_nothing_written(tmp_path):
    fake_versions(tmp_path, "m", 1, 2)
    args = ["serving-config", "--base-dir", str(tmp_path), "--model", "m"]
    with pytest.raises(FileNotFoundError, match=r"version\(s\) \[5\] not in"):
        run_command(args + ["--policy", "m=specific:1,5"])
    with pytest.raises(ValueError, match="label 'stable' points at version 1"):
        run_command(args + ["--label", "m=stable:1"])  # latest:1 serves only version 2
    with pytest.raises(FileNotFoundError, match="'other': no SavedModel versions"):
        run_command(args + ["--model", "other"])
    with pytest.raises(ValueError, match=r"model\(s\) \['x'\] not given"):
        run_command(args + ["--policy", "x=all"])
    assert not (tmp_path / "models.config").exists()
