"""``prepare --runner beam`` on the DirectRunner: the local prepare's shards, from chunks."""

import json
import os

import numpy as np
import pytest

from labquake_tf.data import prepare as prepare_lib
from labquake_tf.data.prepare import prepare
from labquake_tf.errors import DataError

from tests.test_data_columns import LANL, write_lanl_csv

# one skip line for the module when the beam extra is not installed
pytest.importorskip("apache_beam", reason="apache-beam not installed (pip install -e '.[beam,test]')")

IN_PROCESS = ["--direct_num_workers=1", "--direct_running_mode=in_memory"]


def beam_prepare(dataset, out, beam_args=IN_PROCESS, **kwargs):
    from labquake_tf.data import beam

    return beam.prepare(dataset, out, beam_args=beam_args, **kwargs)


def parsed(folder):
    """Every shard record parsed: ``{file: [{key: array}]}``."""
    import tensorflow as tf

    out = {}
    for name in sorted(os.listdir(folder)):
        if name.endswith(".tfrecord"):
            out[name] = []
            for raw in tf.data.TFRecordDataset(os.path.join(folder, name)).as_numpy_iterator():
                ex = tf.train.Example.FromString(raw).features.feature
                out[name].append({
                    "features": np.frombuffer(ex["features"].bytes_list.value[0], "<f4"),
                    "targets": np.frombuffer(ex["targets"].bytes_list.value[0], "<f4"),
                    "time": np.frombuffer(ex["time"].bytes_list.value[0], "<f8"),
                    "mask": np.frombuffer(ex["mask"].bytes_list.value[0], np.uint8),
                    "n_context": ex["n_context"].int64_list.value[0],
                    "start": ex["start"].int64_list.value[0]})
    return out


def assert_same_output(local, beam_out, atol=1e-6):
    a = json.loads((local / "manifest.json").read_text())
    b = json.loads((beam_out / "manifest.json").read_text())
    for m in (a, b):  # shard hashes differ when float features differ in the last bit
        for s in m["splits"].values():
            for shard in s["shards"]:
                shard.pop("sha256"), shard.pop("bytes")
        m["scaler"] = json.dumps(m["scaler"])  # compared below within atol
    sa, sb = (json.loads(m.pop("scaler")) for m in (a, b))
    assert a == b
    for kind in ("features", "targets"):
        np.testing.assert_allclose(sa[kind]["min"], sb[kind]["min"], atol=atol)
        np.testing.assert_allclose(sa[kind]["max"], sb[kind]["max"], atol=atol)
    pa, pb = parsed(local), parsed(beam_out)
    assert list(pa) == list(pb) and sum(map(len, pa.values())) > 3
    for name in pa:
        assert len(pa[name]) == len(pb[name])
        for ra, rb in zip(pa[name], pb[name]):
            for key in ra:
                np.testing.assert_allclose(ra[key], rb[key], atol=atol, rtol=0,
                                           err_msg=f"{name} {key}")


@pytest.fixture(scope="module")
def lanl_csv(tmp_path_factory):
    return write_lanl_csv(tmp_path_factory.mktemp("lanl") / "lanl.csv")


@pytest.fixture(scope="module")
def wave_record(tmp_path_factory):
    """A simulated raw-AE record (HDF5 /ae float32 at 20 kHz, /mech stress), 120 s."""
    from labquake_tf.simulate import generate

    out = tmp_path_factory.mktemp("wave") / "wave.h5"
    return generate(preset="dds", duration=120.0, seed=0, out=str(out), mode="waveform",
                    spinup=20.0, sample_rate=20e3)


def test_lanl_columns_on_two_worker_processes_equal_the_local_prepare(lanl_csv, tmp_path):
    local = tmp_path / "local"
    prepare(lanl_csv, local, columns=LANL, seq_len=64)
    manifest = beam_prepare(lanl_csv, tmp_path / "beam", seq_len=64, columns=LANL,
                            beam_args=["--direct_num_workers=2"], chunk_samples=40 * 300)[0]
    assert manifest["target_names"] == ["ttsf"] and manifest["n_events"] == 9
    # integer AE: the very same bytes
    assert (json.loads((local / "manifest.json").read_text())
            == json.loads((tmp_path / "beam" / "manifest.json").read_text()))
    assert_same_output(local, tmp_path / "beam", atol=0)


def test_chunk_edges_inside_a_window_an_event_and_at_a_split_boundary(wave_record, tmp_path):
    from labquake_tf.data import columns, features

    local = tmp_path / "local"
    m = prepare(wave_record, local, seq_len=50)
    lv = features.LogVariance(20e3)  # 0.1 s windows of 10 hops of 200 samples
    n_rows = 120 * 20_000
    onset, end = m["events"][3]
    assert end - onset >= 2
    val_start = m["splits"]["val"]["step_range"][0]
    # chunks of `per` steps: one edge at the validation part's first step, one on the
    # step after an event's onset (inside the event); each edge cuts the 9 windows
    # that straddle it, whose samples both chunks read
    for per, edge in [(val_start, val_start), (onset + 1, onset + 1)]:
        edges = [k0 for k0, _ in columns.step_chunks(n_rows, lv, per * lv.hop)]
        assert edge in edges and len(edges) >= 2
        out = tmp_path / f"beam-{per}"
        beam_prepare(wave_record, out, seq_len=50, chunk_samples=per * lv.hop)
        assert_same_output(local, out)  # float32 AE: within 1e-6


def test_the_simulator_default_record_and_p4581(dds_dir, tmp_path):
    from labquake_tf.simulate import generate

    sim = generate(preset="biaxial", duration=400.0, seed=0, out=str(tmp_path / "sim.h5"))
    for dataset in (sim, "p4581"):
        local, out = tmp_path / f"local-{os.path.basename(str(dataset))}", tmp_path / "b"
        prepare(dataset, local)
        beam_prepare(dataset, out, force=True)
        assert_same_output(local, out, atol=0)


def test_many_records_from_a_glob_each_equal_its_local_prepare(lanl_csv, tmp_path):
    folder = tmp_path / "records"
    folder.mkdir()
    for seed in (1, 2):
        write_lanl_csv(folder / f"exp{seed}.csv", seed=seed, duration=60.0)
    manifests = beam_prepare(str(folder / "exp*.csv"), tmp_path / "out", seq_len=32,
                             columns=LANL)
    assert [m["dataset"] for m in manifests] == ["exp1", "exp2"]
    for seed in (1, 2):
        local = tmp_path / f"local{seed}"
        prepare(folder / f"exp{seed}.csv", local, columns=LANL, seq_len=32)
        assert_same_output(local, tmp_path / "out" / f"exp{seed}", atol=0)


def test_a_bad_record_fails_as_the_local_prepare_does_and_writes_nothing(lanl_csv, tmp_path):
    lines = lanl_csv.read_text().splitlines()
    lines[200001] = "7,oops"  # in a late chunk: the earlier ones are fine
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as local:
        prepare(bad, tmp_path / "local", columns=LANL)
    good = tmp_path / "good.csv"
    good.write_text(lanl_csv.read_text())
    with pytest.raises(DataError) as on_beam:
        beam_prepare(f"{good},{bad}", tmp_path / "beam", columns=LANL, chunk_samples=40 * 100)
    assert str(on_beam.value) == str(local.value)
    assert "row 200,002, column time_to_failure" in str(local.value)
    assert not (tmp_path / "local").exists() and not (tmp_path / "beam").exists()
    # too few events: the error of the split, also the same
    short = write_lanl_csv(tmp_path / "short.csv", duration=14.0)
    with pytest.raises(DataError) as local:
        prepare(short, tmp_path / "local", columns=LANL)
    with pytest.raises(DataError) as on_beam:
        beam_prepare(short, tmp_path / "beam", columns=LANL)
    assert str(on_beam.value) == str(local.value) and "stick-slip event(s)" in str(local.value)
    assert sorted(os.listdir(tmp_path)) == ["bad.csv", "good.csv", "short.csv"]


def test_a_worker_that_dies_mid_shard_is_retried_and_the_output_is_the_same(
        lanl_csv, tmp_path, monkeypatch):
    local = tmp_path / "local"
    prepare(lanl_csv, local, columns=LANL, seq_len=64)
    marker = tmp_path / "died"
    monkeypatch.setenv("LABQUAKE_BEAM_TEST_FAIL_ONCE", str(marker))
    # The bundle-based DirectRunner retries a failed bundle (up to 4 attempts), as
    # Flink, Spark and Dataflow retry the work of a lost worker.
    beam_prepare(lanl_csv, tmp_path / "beam", columns=LANL, seq_len=64,
                 beam_args=["--runner=BundleBasedDirectRunner"])
    assert marker.exists()  # the first attempt did die, leaving half a shard behind
    assert not [n for n in os.listdir(tmp_path / "beam") if n.endswith(".tmp")]
    assert_same_output(local, tmp_path / "beam", atol=0)


def test_the_cli_passes_beam_options_through(lanl_csv, tmp_path, capsys):
    from labquake_tf.cli import run_command

    out = tmp_path / "out"
    assert run_command(["prepare", "--runner", "beam", "--dataset", str(lanl_csv),
                        "--columns", LANL, "--out", str(out), "--seq-len", "64",
                        *IN_PROCESS]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["out"] == str(out) and printed["n_events"] == 9
    assert prepare_lib.PASSES_UNKNOWN_OPTIONS


def test_an_option_neither_prepare_nor_beam_knows_is_refused_before_any_work(lanl_csv,
                                                                             tmp_path):
    from labquake_tf.cli import run_command
    from labquake_tf.errors import UsageError

    with pytest.raises(UsageError, match="unknown option.*--direct_num_workrs=2"):
        run_command(["prepare", "--runner", "beam", "--dataset", str(lanl_csv), "--columns",
                     LANL, "--out", str(tmp_path / "o"), "--direct_num_workrs=2"])
    assert os.listdir(tmp_path) == []


def test_a_bad_raw_hdf5_fails_with_the_local_error(wave_record, tmp_path):
    import shutil

    import h5py

    bad = tmp_path / "bad.h5"
    shutil.copy(wave_record, bad)
    with h5py.File(bad, "r+") as f:
        f["ae"][1_500_000, 0] = np.nan  # 75 s in: a late chunk
    with pytest.raises(DataError) as local:
        prepare(bad, tmp_path / "local")
    with pytest.raises(DataError) as on_beam:
        beam_prepare(bad, tmp_path / "beam", chunk_samples=200 * 500)
    # The same line up to its count of further bad windows: a NaN sample spoils the running
    # window sums to the end of the chunk it is in (features.LogVariance), and the local
    # reader's chunks are not Beam's
    first = str(local.value).split(" (and ")[0]
    assert str(on_beam.value).split(" (and ")[0] == first
    assert first.endswith("not finite in the window ending t = 75.01 s (a zero-variance or "
                          "non-finite stretch of the AE)")
    assert sorted(os.listdir(tmp_path)) == ["bad.h5"]
