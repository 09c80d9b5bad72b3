"""bench_train's plumbing: the rotating round-robin, per-round ratios, the PyTorch worker
protocol (through a stub interpreter: torch is not a package dependency)."""

import importlib.util
import json
import math
import os
import pathlib
import stat
import sys

import pytest

from labquake_tf.models import PRESETS, build_tcn

BENCH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "bench_train.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_train", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_round_robin_warms_each_timer_then_rotates_the_order(bench):
    calls = []

    def timer(name, value):
        def time_it(steps=None):
            calls.append((name, steps))
            return value
        return time_it

    timers = {"a": timer("a", 1.0), "b": timer("b", 2.0), "torch@1": timer("torch@1", 4.0)}
    rounds = bench.round_robin(timers, 4)
    # One untimed 1-step call each, then each round starts one place further on.
    assert calls[:3] == [("a", 1), ("b", 1), ("torch@1", 1)]
    order = [name for name, _ in calls[3:]]
    assert order == ["a", "b", "torch@1", "b", "torch@1", "a", "torch@1", "a", "b",
                     "a", "b", "torch@1"]
    assert rounds == [{"a": 1.0, "b": 2.0, "torch@1": 4.0}] * 4


def test_summarize_gives_median_and_range(bench):
    assert bench.summarize([3.0, 1.0, 2.0]) == {"median": 2.0, "min": 1.0, "max": 3.0}
    assert bench.summarize([4.0, 1.0, 2.0, 3.0]) == {"median": 2.5, "min": 1.0, "max": 4.0}


STUB = """#!{python}
import json, os, sys
# Stands in for `python torch_tcn.py --serve ...`: answers as the worker does.
assert sys.argv[2] == "--serve", sys.argv
print(json.dumps({{"ready": True, "framework": "stub", "trainable_params":
                  int(os.environ["STUB_PARAMS"])}}), flush=True)
for line in sys.stdin:
    request = json.loads(line)
    with open(os.environ["STUB_LOG"], "a") as log:
        log.write(line)
    speed = {{1: 100.0, 2: 50.0}}[request["threads"]]
    print(json.dumps({{"threads": request["threads"], "samples_per_s": speed}}), flush=True)
"""


@pytest.fixture
def stub_python(tmp_path, monkeypatch):
    path = tmp_path / "python"
    path.write_text(STUB.format(python=sys.executable))
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("STUB_LOG", str(tmp_path / "requests.jsonl"))
    return path


def tiny_params():
    return sum(math.prod(w.shape) for w in build_tcn(**PRESETS["tiny"]).trainable_weights)


def test_bench_interleaves_the_torch_worker_and_reports_ratios(bench, stub_python, monkeypatch,
                                                                capsys):
    monkeypatch.setenv("STUB_PARAMS", str(tiny_params()))
    assert bench.main(["--preset", "tiny", "--steps", "1", "--warmup", "1", "--repeats", "2",
                       "--paths", "conv",
                       "--torch-python", str(stub_python)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    threads = sorted({1, os.cpu_count()})
    assert set(result["rounds"][0]) == {"conv", "default", *(f"torch@{n}" for n in threads)}
    # The default is what compile_model chose for the tiny TCN on CPU.
    assert result["auto_jit_compile"] is False
    assert result["auto_conv_impl"] == {"1": "conv", "2": "conv", "4": "conv"}
    assert result["torch_samples_per_s"] == 100.0  # its best thread count
    assert result["torch_samples_per_s_by_threads"]["1"] == 100.0
    by_round = [r["default"] / 100.0 for r in result["rounds"]]
    assert result["default_over_torch_by_round"] == bench.summarize(by_round)
    assert result["default_over_torch"] == round(result["keras_samples_per_s"] / 100.0, 2)
    # The worker got one warm-up step, then the timed steps, at each thread count.
    requests = [json.loads(line) for line in
                pathlib.Path(os.environ["STUB_LOG"]).read_text().splitlines()]
    assert requests[0]["steps"] == 1
    assert sorted(r["threads"] for r in requests) == sorted(threads * 3)


def test_bench_refuses_a_torch_model_of_another_size(bench, stub_python, monkeypatch):
    monkeypatch.setenv("STUB_PARAMS", "12")
    with pytest.raises(RuntimeError, match="not the same model"):
        bench.main(["--preset", "tiny", "--steps", "1", "--warmup", "1", "--repeats", "1",
                    "--paths", "conv", "--torch-python", str(stub_python)])
