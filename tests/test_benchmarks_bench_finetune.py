"""bench_finetune's default path (ensemble + forward twin, the job's default heads) end to
end on the tiny preset: its JSON and the counts it reports."""

import json
import os
import pathlib
import subprocess
import sys

from labquake_tf.models.heads import DEFAULT_MEMBERS

BENCH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "bench_finetune.py"


def test_default_finetune_is_timed_whole(dds_dir):
    out = subprocess.run([sys.executable, str(BENCH), "--preset", "tiny", "--epochs", "2",
                          "--patience", "1"], capture_output=True, text=True, timeout=600,
                         check=True, env={**os.environ, "LABQUAKE_DATA_DIR": str(dds_dir)})
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["members"] == DEFAULT_MEMBERS  # the job's default ensemble
    assert (result["epochs"], result["patience"]) == (2, 1)
    assert len(result["member_epochs"]) == len(result["twin_member_epochs"]) == DEFAULT_MEMBERS
    assert all(1 <= e <= 2 for e in result["member_epochs"] + result["twin_member_epochs"])
    assert result["keras_s"] > 0 and result["twin_windows_run_again"] == 0
    assert 0 < result["early_windows"] < result["train_windows"]
    assert "speedup_vs_torch" not in result  # no --torch-python, no PyTorch side
