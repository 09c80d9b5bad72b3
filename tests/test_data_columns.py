"""Raw records in their own column layout (``--columns``): CSV, Parquet, HDF5, read in
chunks whose windows equal one pass over the whole waveform."""

import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest

from labquake_tf.data import columns, features, registry
from labquake_tf.errors import DataError, UsageError

RATE = 4000
LANL = "ae=acoustic_data,ttf=time_to_failure,rate=4000"


def lanl_arrays(duration=80.0, cycle=9.0, seed=0):
    """The LANL earthquake-prediction layout at 4 kHz: int AE louder near failure, and a
    time-to-failure sawtooth (failures at 6, 15, 24, ... s: 9 in 80 s)."""
    n = int(RATE * duration)
    t = np.arange(n) / RATE
    ttf = cycle - (t + 3.0) % cycle
    rng = np.random.default_rng(seed)
    ae = np.round(rng.standard_normal(n) * (5 + 40 * np.exp(-ttf / 2))).astype(np.int16)
    return ae, ttf


def write_lanl_csv(path, **kwargs):
    ae, ttf = lanl_arrays(**kwargs)
    with open(path, "w") as f:
        f.write("acoustic_data,time_to_failure\n")
        np.savetxt(f, np.stack([ae, ttf], 1), fmt=["%d", "%.9f"], delimiter=",")
    return path


@pytest.fixture(scope="module")
def lanl_csv(tmp_path_factory):
    return write_lanl_csv(tmp_path_factory.mktemp("lanl") / "lanl.csv")


def test_parse_names_bad_column_maps():
    assert columns.parse(LANL) == {"ae": ["acoustic_data"], "ttf": "time_to_failure",
                                   "rate": 4000.0}
    assert columns.parse("ae=a+b,stress=s,rate=1e6")["ae"] == ["a", "b"]
    for bad, why in [("ae=a,ttf=t", "rate"), ("ttf=t,rate=4", "ae"), ("ae=a,rate=4", "target"),
                     ("ae=a,ttf=t,rate=-1", "positive"), ("ae=a,foo=t,rate=4", "keys")]:
        with pytest.raises(UsageError, match=why):
            columns.parse(bad)


def test_lanl_csv_prepares_with_ttf_events_and_a_ttsf_target(lanl_csv):
    record = registry.load_record(lanl_csv, columns=LANL)
    assert record.feature_names == ["logvar_ch1"] and list(record.targets) == ["ttsf"]
    # one event per failure, at the step whose window ends just before the countdown restarts
    assert len(record.events) == 9
    np.testing.assert_allclose(record.time[record.events[:, 0]], np.arange(6, 80, 9), atol=0.011)
    # the target at a step is the TTF at its window's last sample (0.1 s window, 0.01 s hop)
    ae, ttf = lanl_arrays()
    k = np.array([0, 500, 7000])
    np.testing.assert_allclose(record.targets["ttsf"][k], ttf[k * 40 + 399])
    assert record.time[0] == pytest.approx(0.1) and record.dt == pytest.approx(0.01)


@pytest.mark.parametrize("chunk_samples", [40 * 7 + 13, 1000, 1 << 20])
def test_chunks_overlap_so_every_window_equals_one_pass(lanl_csv, chunk_samples):
    # chunks of 7, 25, ... steps: every chunk edge falls inside some window
    record = columns.read(lanl_csv, LANL, chunk_samples=chunk_samples)
    ae, _ = lanl_arrays()
    whole = features.log_variance(ae[:, None], RATE, 0.1, 0.01)
    assert record.features.shape == whole.shape == (7991, 1)
    np.testing.assert_array_equal(record.features, whole)  # integer AE: exact


def test_parquet_and_hdf5_give_the_csv_record(lanl_csv, tmp_path):
    ae, ttf = lanl_arrays()
    h5 = tmp_path / "lanl.h5"
    with h5py.File(h5, "w") as f:
        f["acoustic_data"], f["time_to_failure"] = ae, ttf
    paths = [h5]
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"acoustic_data": ae, "time_to_failure": ttf}),
                       tmp_path / "lanl.parquet", row_group_size=50_000)
        paths.append(tmp_path / "lanl.parquet")
    except ImportError:
        pass  # Parquet needs pyarrow, which the beam extra brings
    ref = columns.read(lanl_csv, LANL, chunk_samples=30_000)
    for path in paths:
        got = columns.read(path, LANL, chunk_samples=30_000)
        np.testing.assert_array_equal(got.features, ref.features)
        np.testing.assert_allclose(got.targets["ttsf"], ref.targets["ttsf"], atol=1e-9)
        np.testing.assert_array_equal(got.events, ref.events)


def test_a_stress_column_goes_through_the_shared_targets(tmp_path):
    ae, ttf = lanl_arrays()
    stress = 5.0 + 0.1 * (9.0 - ttf)  # loads up, drops at each failure
    h5 = tmp_path / "rig.h5"
    with h5py.File(h5, "w") as f:
        f["ae"], f["tau"] = ae, stress
    record = columns.read(h5, "ae=ae,stress=tau,rate=4000")
    assert set(record.targets) == {"shear_stress", "ttsf", "ttef"}
    assert len(record.events) == 9 and record.attrs["lowpass_applied"]


def test_bad_values_name_the_file_row_and_column(lanl_csv, tmp_path):
    lines = lanl_csv.read_text().splitlines()
    lines[5001] = "12x,3.2"
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=rf"^{bad} row 5,002, column acoustic_data: .*12x"):
        columns.read(bad, LANL)
    with pytest.raises(DataError, match=r"missing column\(s\) ttf_s; found acoustic_data, "
                                        r"time_to_failure"):
        columns.read(lanl_csv, "ae=acoustic_data,ttf=ttf_s,rate=4000")
    lines[5001] = "12,nan"
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"row 5,002, column time_to_failure: nan is not a "
                                        "finite number"):
        columns.read(bad, LANL)


def test_the_cli_prepares_a_lanl_file_and_refuses_beam_options_without_beam(lanl_csv,
                                                                             tmp_path):
    from labquake_tf.cli import run_command

    out = tmp_path / "out"
    assert run_command(["prepare", "--dataset", str(lanl_csv), "--columns", LANL,
                        "--out", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["target_names"] == ["ttsf"] and manifest["n_events"] == 9
    assert manifest["request"]["options"]["columns"] == LANL
    with pytest.raises(UsageError, match="unrecognized arguments: --direct_num_workers=2"):
        run_command(["prepare", "--dataset", str(lanl_csv), "--columns", LANL,
                     "--out", str(tmp_path / "o2"), "--direct_num_workers=2"])


def test_the_default_install_never_imports_beam(lanl_csv, tmp_path):
    code = ("import sys; from labquake_tf.cli import run_command; "
            f"run_command(['prepare', '--dataset', {str(lanl_csv)!r}, '--columns', {LANL!r}, "
            f"'--out', {str(tmp_path / 'o')!r}]); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('apache_beam', 'pyarrow')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_a_lanl_file_fine_tunes_a_ttsf_head(lanl_csv, tmp_path):
    from labquake_tf.cli import run_command
    from labquake_tf.models import build_tcn

    from tests.test_training_finetune import source_run

    data = tmp_path / "data"
    run_command(["prepare", "--dataset", str(lanl_csv), "--columns", LANL, "--out", str(data),
                 "--seq-len", "32", "--split", "0.5,0.1,0.4"])
    src = source_run(build_tcn(16, filters=8, kernel_size=3, blocks=3), tmp_path / "src",
                     dataset="x", target_names=["shear_stress"], feature_names=["logvar_ch1"])
    out = tmp_path / "ft"
    assert run_command(["finetune", "--from", str(src), "--data", str(data), "--target", "ttsf",
                        "--blocks", "2", "--seq-len", "12", "--epochs", "3", "--ensemble", "1",
                        "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())["test"]["targets"]["ttsf"]
    assert json.loads((out / "manifest.json").read_text())["target_names"] == ["ttsf"]
    # learnt: the AE grows louder as failure nears (0.89 on this file; the mean scores 0)
    assert metrics["r2"] > 0.3 and metrics["units"] == "s"
