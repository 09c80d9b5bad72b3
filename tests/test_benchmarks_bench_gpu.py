"""bench_gpu's arithmetic (FLOPs, peaks, ratios) here; its CPU run where JAX is installed."""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import pytest

BENCH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "bench_gpu.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_gpu", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_flops_counts_every_tap_and_three_passes(bench):
    # 2 blocks, 1 -> 4 filters, kernel 3, 10 steps, batch 2, one target
    conv = lambda t, i, o, k: 2 * 2 * t * k * i * o  # noqa: E731
    block0 = conv(10, 1, 4, 3) + conv(10, 4, 4, 3) + conv(10, 1, 4, 1)  # + residual 1x1
    block1 = 2 * conv(10, 4, 4, 3)
    head = conv(11, 4, 64, 2) + 2 * 2 * 64 * 11 * 128 + 2 * 2 * 128
    kw = dict(seq_len=10, filters=4, kernel_size=3, blocks=2, batch=2)
    assert bench.train_flops(**kw) == 3 * (block0 + block1 + head)
    assert bench.train_flops(**kw, frozen_blocks=1) == block0 + 3 * (block1 + head)
    # the paper preset at batch 64: about 7 TFLOP per step
    paper = bench.train_flops(seq_len=512, filters=512, kernel_size=8, blocks=9, batch=64)
    assert 6.9e12 < paper < 7.1e12


def test_peaks_by_chip_and_precision(bench):
    assert bench.peak_tflops("gpu:NVIDIA H200", "mixed_bfloat16") == 989.4
    assert bench.peak_tflops("NVIDIA H100 80GB HBM3", "float32") == 67.0
    assert bench.peak_tflops("NVIDIA H100 80GB HBM3", "fp32", tf32=True) == 494.7
    assert bench.peak_tflops("cpu:cpu", "bf16") is None


def test_summary_and_ratios(bench):
    s = bench.summarize("torch bf16", 2.0, 10, 64, 1e12, "H200", "bf16")
    assert s["samples_per_s"] == 320.0 and s["step_ms"] == 200.0
    assert s["tflops"] == 5.0 and s["share_of_peak"] == round(5.0 / 989.4, 4)
    runs = [{"name": "keras-jax float32", "precision": "float32", "samples_per_s": 300.0},
            {"name": "keras-jax mixed_bfloat16", "precision": "mixed_bfloat16",
             "samples_per_s": 2000.0},
            {"name": "torch fp32", "precision": "fp32", "samples_per_s": 200.0},
            {"name": "torch bf16", "precision": "bf16", "samples_per_s": 1600.0}]
    assert bench.compare(runs) == {"float32_vs_torch": 1.5, "mixed_bfloat16_vs_torch": 1.25}


def test_hlo_stats_reads_ops_and_pads():
    sys.path.insert(0, str(BENCH.parent))
    import gpu_lowering

    hlo = ("%p = f32[4,2304,512]{2,1,0} pad(%x, %c), padding=0_0x1792_0x0_0\n"
           "%c = f32[4,512,512]{2,1,0} convolution(%p, %k), window={size=8 rhs_dilate=256}\n"
           "%d = f32[4,512,512]{2,1,0} dot(%a, %b)\n")
    stats = gpu_lowering.hlo_stats(hlo)
    assert stats["max_pad"] == 1792
    assert stats["hlo_ops"]["convolution"] == 1 and stats["hlo_ops"]["dot"] == 1
    assert stats["hlo_ops"]["pad"] == 1


def test_cpu_run_end_to_end():
    """The CPU path under Keras/JAX (this interpreter, or $LABQUAKE_JAX_PYTHON)."""
    python = os.environ.get("LABQUAKE_JAX_PYTHON", sys.executable)
    env = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": str(BENCH.parents[1])}
    probe = subprocess.run([python, "-c", "import jax, keras"], capture_output=True, env=env)
    if probe.returncode:
        pytest.skip("no JAX here: set LABQUAKE_JAX_PYTHON to an interpreter with jax + keras")
    out = subprocess.run([python, str(BENCH), "--preset", "tiny", "--device", "cpu",
                          "--steps", "2", "--warmup", "1", "--batch", "4",
                          "--precisions", "float32", "--torch", ""],
                         capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    (run,) = result["runs"]
    assert run["name"] == "keras-jax float32" and run["samples_per_s"] > 0
    assert run["compile_s"] > 0 and run["nonfinite_losses"] == 0
