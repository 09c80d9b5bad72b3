import pytest

from labquake_tf.cli import main, run_command
from labquake_tf.serving.config import (models_config, parse_policy, read_batching_parameters,
                                        read_model_config, read_monitoring_config)


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


def test_model_config_file_reads_back_what_serving_config_writes(tmp_path):
    models = [{"name": "a", "base_path": "/models/a", "policy": ("latest", [2])},
              {"name": "b", "base_path": "rel/b", "policy": ("specific", [1, 3]),
               "labels": {"stable": 1}},
              {"name": "c", "base_path": "/models/c", "policy": ("all", [])}]
    (tmp_path / "models.config").write_text(models_config(models))
    got = read_model_config(tmp_path / "models.config")
    assert [(m["name"], m["policy"], m["labels"]) for m in got] == [
        ("a", ("latest", [2]), {}), ("b", ("specific", [1, 3]), {"stable": 1}),
        ("c", ("all", []), {})]
    assert got[1]["base_path"] == tmp_path / "rel/b"  # relative to the config file
    (tmp_path / "bad.config").write_text("model_config_list { config { nam: 'a' } }")
    with pytest.raises(ValueError, match=r"bad.config: 1:30 .*no field named \"nam\""):
        read_model_config(tmp_path / "bad.config")


def test_batching_parameters_in_tf_servings_text_format(tmp_path):
    path = tmp_path / "batching.txt"
    path.write_text("max_batch_size { value: 128 }\nbatch_timeout_micros { value: 0 }\n"
                    "max_enqueued_batches { value: 1000000 }\nnum_batch_threads { value: 8 }\n"
                    "allowed_batch_sizes: 32\nallowed_batch_sizes: 128\n"
                    "pad_variable_length_inputs: true\n")
    assert read_batching_parameters(path) == {
        "max_batch_size": 128, "batch_timeout_micros": 0, "num_batch_threads": 8,
        "max_enqueued_batches": 1000000, "allowed_batch_sizes": [32, 128]}
    path.write_text("max_batch_size { value: 16 }\n")  # the rest: TF Serving's defaults
    params = read_batching_parameters(path)
    assert params["max_batch_size"] == 16 and params["max_enqueued_batches"] == 10
    for text, message in (("allowed_batch_sizes: 8\n", "end at max_batch_size"),
                          ("max_batch_size { value: 0 }", "max_batch_size must be >= 1"),
                          ("max_batch_size: 8", "max_batch_size"),
                          ("batch_size { value: 8 }", "no field named \"batch_size\"")):
        path.write_text(text)
        with pytest.raises(ValueError, match=message):
            read_batching_parameters(path)
    with pytest.raises(FileNotFoundError, match="batching parameters file"):
        read_batching_parameters(tmp_path / "missing.txt")


def test_monitoring_config(tmp_path):
    path = tmp_path / "monitoring.txt"
    path.write_text('prometheus_config { enable: true, path: "/monitoring/prometheus/metrics" }')
    assert read_monitoring_config(path) == "/monitoring/prometheus/metrics"
    path.write_text("prometheus_config { enable: true }")
    assert read_monitoring_config(path) == "/monitoring/prometheus/metrics"
    path.write_text("prometheus_config { enable: false }")
    assert read_monitoring_config(path) is None
