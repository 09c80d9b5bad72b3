import h5py
import pytest

from labquake_tf import cli
from labquake_tf.jobs.simulate import parse_overrides


def test_simulate_writes_the_record_reports_cycles_and_plots(tmp_path, capsys):
    out, png = tmp_path / "sim.h5", tmp_path / "sim.png"
    rc = cli.main(["simulate", "--preset", "dds", "--duration", "30", "--out", str(out),
                   "--seed", "2", "--set", "spinup=20", "--plot", str(png)])
    assert rc == 0
    captured = capsys.readouterr()
    with h5py.File(out, "r") as f:
        n_events = len(f["truth/events"])
        assert f.attrs["seed"] == 2 and f.attrs["preset"] == "dds"
    assert n_events >= 3
    assert f"cycles: {n_events}, recurrence" in captured.out
    assert "100%" in captured.err  # the progress bar finished
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000


def test_simulate_rejects_an_unknown_parameter(tmp_path, capsys):
    rc = cli.main(["simulate", "--duration", "5", "--out", str(tmp_path / "x.h5"),
                   "--set", "stifness=1e-3"])
    assert rc == 2
    assert "unknown simulation parameter(s) ['stifness']" in capsys.readouterr().err
    assert not (tmp_path / "x.h5").exists()


def test_overrides_parse_numbers_and_words():
    assert parse_overrides(["stiffness=5e-4", "n_channels=2", "law=slip"]) == {
        "stiffness": 5e-4, "n_channels": 2, "law": "slip"}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_overrides(["stiffness"])
