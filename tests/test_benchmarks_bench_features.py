"""bench_features --raw end to end on a small record: its JSON, its cross-checks."""

import json
import pathlib
import subprocess
import sys

BENCH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "bench_features.py"


def test_raw_mode_reports_ratios_and_bounded_memory(tmp_path):
    out = subprocess.run([sys.executable, str(BENCH), "--raw", "--gb", "0.02", "--channels",
                          "1,3", "--repeats", "1", "--dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=600, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert [r["channels"] for r in result["records"]] == [1, 3]
    assert result["raw_vs_read"] == min(r["raw_vs_read"] for r in result["records"]) > 0
    for r in result["records"]:
        assert r["windows"] == (r["samples"] // r["channels"] - 200_000) // 20_000 + 1
        assert r["h5py_read_samples_per_s"] > 0 and r["npz_features_samples_per_s"] > 0
        # a few 16 MiB buffers over the interpreter's own, whatever the record's size
        assert r["rss_mib_over_import"] < 200
    assert result["kernel_vs_sum"] > 0
    assert list(tmp_path.iterdir()) == []  # the records are deleted
