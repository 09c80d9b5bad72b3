import json

import h5py
import numpy as np
import pytest

from labquake_tf.data import readers
from labquake_tf.simulate import (PRESETS, SimulationConfig, cycle_statistics, generate,
                                  resolve_config, simulate_fault)
from labquake_tf.simulate import experiment

DURATION = 100.0


@pytest.fixture(scope="module")
def record_file(tmp_path_factory):
    """~5 biaxial cycles, direct-to-features."""
    out = tmp_path_factory.mktemp("sim") / "biaxial.h5"
    return generate("biaxial", DURATION, seed=3, out=out, spinup=40.0)


def test_features_record_matches_the_hdf5_layout(record_file):
    with h5py.File(record_file, "r") as f:
        assert dict(f.attrs)["format"] == "labquake-hdf5" and f.attrs["version"] == 1
        assert f.attrs["name"] == "synthetic-biaxial"
        assert "ae" not in f
        logvar = f["features/logvar"]
        assert logvar.dtype == np.float32
        assert logvar.shape == (int(round((DURATION - 0.1) / 0.01)) + 1, 1)
        assert (logvar.attrs["hop"], logvar.attrs["window"], logvar.attrs["t0"]) == (0.01, 0.1, 0.1)
        assert list(logvar.attrs["channel_names"]) == ["ch1"]
        for key, units in (("shear_stress", "MPa"), ("normal_stress", "MPa"),
                           ("displacement", "um")):
            ds = f[f"mech/{key}"]
            assert ds.shape == (int(DURATION * 100) + 1,)  # both ends
            assert (ds.attrs["sample_rate"], ds.attrs["t0"]) == (100.0, 0.0)
            assert ds.attrs["units"] == units
        events = f["truth/events"][()]
        assert events.shape[1] == 2 and len(events) >= 4
        assert np.all(events[:, 0] < events[:, 1])
        assert events.min() >= 0 and events.max() <= DURATION
        config = SimulationConfig.from_dict(json.loads(f.attrs["config"]))
    assert config == resolve_config("biaxial", spinup=40.0)
    assert sorted(p.name for p in record_file.parent.iterdir()) == ["biaxial.h5"]  # no temp left


def test_the_data_reader_finds_the_simulated_events(record_file):
    record = readers.read(record_file)
    with h5py.File(record_file, "r") as f:
        truth = f["truth/events"][()]
    found = record.time[record.events]
    assert found.shape == truth.shape
    # The stress peak is flat on top, so the onset is looser than the end.
    np.testing.assert_allclose(found[:, 0], truth[:, 0], atol=0.5)
    np.testing.assert_allclose(found[:, 1], truth[:, 1], atol=0.25)


def test_cycle_statistics_describe_the_true_events(record_file):
    stats = cycle_statistics(record_file)
    with h5py.File(record_file, "r") as f:
        onsets = f["truth/events"][:, 0]
    assert stats["count"] == len(onsets)
    assert stats["recurrence_mean"] == pytest.approx(np.diff(onsets).mean())
    assert stats["stress_drop_mean"] == pytest.approx(0.14, abs=0.03)


@pytest.mark.parametrize("preset, duration, low, high", [("biaxial", 100.0, 16.0, 24.0),
                                                         ("dds", 40.0, 4.5, 7.5)])
def test_presets_recur_at_their_rigs_intervals(preset, duration, low, high):
    config = PRESETS[preset]
    history = simulate_fault(config.fault, duration, dt=0.01, seed=0, spinup=config.spinup)
    assert low < np.diff(history.events[:, 0]).mean() < high
    assert config.fault.stiffness < config.fault.critical_stiffness


def test_slow_preset_slips_slowly():
    config = PRESETS["slow"]
    history = simulate_fault(config.fault, 60.0, dt=0.01, seed=0, spinup=config.spinup)
    assert len(history.events) >= 4
    assert history.slip_rate.max() < 10 * config.fault.load_velocity  # biaxial: > 100 V_l
    assert 0.85 < config.fault.stiffness / config.fault.critical_stiffness < 1


def test_same_seed_gives_the_same_record(tmp_path):
    def datasets(path):
        with h5py.File(path, "r") as f:
            return {k: f[k][()] for k in ("features/logvar", "mech/shear_stress", "truth/events")}

    kwargs = dict(preset="dds", duration=10.0, spinup=5.0)
    a, b, c = (datasets(generate(seed=s, out=tmp_path / f"{i}.h5", **kwargs))
               for i, s in enumerate((7, 7, 8)))
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(a["features/logvar"], c["features/logvar"])


def test_waveform_record_reads_like_its_features_twin(tmp_path):
    kwargs = dict(preset="dds", duration=10.0, seed=1, spinup=10.0, sample_rate=20e3, n_channels=2)
    wave = generate(out=tmp_path / "wave.h5", mode="waveform", **kwargs)
    feats = generate(out=tmp_path / "feats.h5", **kwargs)
    with h5py.File(wave, "r") as f:
        assert "features" not in f
        assert f["ae"].shape == (200000, 2) and f["ae"].dtype == np.float32
        assert (f["ae"].attrs["sample_rate"], f["ae"].attrs["t0"]) == (20000.0, 0.0)
    from_wave, from_feats = (readers.read(p, channels=[1, 2]) for p in (wave, feats))
    assert from_wave.features.shape == from_feats.features.shape == (991, 2)
    np.testing.assert_allclose(from_wave.time, from_feats.time)
    assert np.median(np.abs(from_wave.features - from_feats.features)) < 0.05
    stress = [r.targets["shear_stress"] for r in (from_wave, from_feats)]
    np.testing.assert_allclose(*stress, atol=1e-9)


@pytest.mark.parametrize("kwargs, match", [
    (dict(preset="granite"), "unknown simulation preset 'granite'"),
    (dict(stiffnes=1e-3), "unknown simulation parameter.*stiffnes"),
    (dict(mode="raw"), "mode must be one of"),
    (dict(duration=0.0), "duration"),
    (dict(out=None), "out="),
    (dict(sample_rate=8000.0, mode="waveform"), "Nyquist"),
])
def test_bad_input_is_named_and_writes_nothing(tmp_path, kwargs, match):
    kwargs = {"out": tmp_path / "x.h5", "duration": 5.0, **kwargs}
    with pytest.raises(ValueError, match=match):
        generate(**kwargs)
    assert list(tmp_path.iterdir()) == []


def test_a_failure_while_writing_leaves_the_old_file_alone(tmp_path, monkeypatch):
    out = tmp_path / "sim.h5"
    out.write_bytes(b"previous")

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(experiment.ae, "window_logvar", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        generate("dds", 5.0, out=out, spinup=1.0)
    assert out.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["sim.h5"]
