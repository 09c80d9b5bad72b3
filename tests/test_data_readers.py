import h5py
import numpy as np
import pytest

from labquake_tf.data import readers

AE_RATE, MECH_RATE = 10_000.0, 200.0


def _sawtooth_stress(n, rate, period_s=2.0):
    t = np.arange(n) / rate
    return t, 5.0 + 0.5 * ((t / period_s) % 1.0)  # 0.5 MPa drops every 2 s


def _write_h5(path, ae=None, logvar=None, fmt="labquake-hdf5", stress=True,
              stress_samples=int(11 * MECH_RATE)):
    with h5py.File(path, "w") as f:
        f.attrs.update(format=fmt, version=1, name="tiny")
        if ae is not None:
            d = f.create_dataset("ae", data=ae)
            d.attrs.update(sample_rate=AE_RATE, t0=0.0)
        if logvar is not None:
            d = f.create_dataset("features/logvar", data=logvar)
            d.attrs.update(hop=0.01, window=0.1, t0=0.1)
        if stress:
            _, s = _sawtooth_stress(stress_samples, MECH_RATE)
            d = f.create_dataset("mech/shear_stress", data=s)
            d.attrs.update(sample_rate=MECH_RATE, t0=0.0, units="MPa")
    return path


@pytest.fixture
def raw_h5(tmp_path):
    rng = np.random.default_rng(0)
    n = int(10 * AE_RATE)
    ae = (rng.normal(0, 1, (n, 2)) * (100 + 50 * np.arange(n)[:, None] % 7)).astype(np.int16)
    return _write_h5(tmp_path / "raw.h5", ae=ae), ae


def test_hdf5_raw_ae_through_tfio_matches_numpy(raw_h5):
    path, ae = raw_h5
    record = readers.read(path, channels=[1, 2], chunk_seconds=0.37)  # chunks cut hop blocks
    ref = np.log10(np.array([ae[k * 100:k * 100 + 1000].astype(np.float64).var(axis=0)
                             for k in range((len(ae) - 1000) // 100 + 1)]))
    assert record.feature_names == ["logvar_ch1", "logvar_ch2"]
    np.testing.assert_allclose(record.features, ref, atol=2e-6)
    # Times are window ENDS; the stress is interpolated onto them.
    np.testing.assert_allclose(record.time[:3], [0.1, 0.11, 0.12])
    assert record.attrs["lowpass_applied"] and record.attrs["ttf"] == "derived"
    assert len(record.events) == 5  # drops at 2, 4, 6, 8 and the last window end, 10 s
    np.testing.assert_allclose(record.time[record.events[:, 0]], [2, 4, 6, 8, 10], atol=0.05)


def test_hdf5_raw_ae_std_output(raw_h5):
    path, ae = raw_h5
    record = readers.read(path, output="std")
    assert record.feature_names == ["std_ch1"]
    np.testing.assert_allclose(record.features[0, 0], ae[:1000, 0].astype(float).std(), rtol=1e-6)


def test_hdf5_features_layout_and_default_channel(tmp_path):
    logvar = np.random.default_rng(0).normal(2, 0.1, (1000, 3)).astype(np.float32)
    record = readers.read(_write_h5(tmp_path / "f.h5", logvar=logvar))
    assert record.feature_names == ["logvar_ch1"]
    np.testing.assert_array_equal(record.features[:, 0], logvar[:, 0])
    np.testing.assert_allclose(record.time[[0, -1]], [0.1, 10.09])


def test_window_ending_on_the_last_stress_sample_is_kept(tmp_path):
    # 0.1 + 0.01 * 1596 rounds to 16.060000000000002 > 3212 / 200 = 16.06: the last
    # window ends on the last stress sample and must not be lost to the rounding.
    logvar = np.random.default_rng(0).normal(2, 0.1, (1597, 1)).astype(np.float32)
    record = readers.read(_write_h5(tmp_path / "f.h5", logvar=logvar, stress_samples=3213))
    assert len(record.time) == 1597
    np.testing.assert_allclose(record.time[-1], 16.06)


def test_simulated_record_reads(tmp_path):
    simulate = pytest.importorskip("labquake_tf.simulate")
    path = simulate.generate(preset="dds", duration=30.0, seed=0, out=tmp_path / "s.h5",
                             mode="features")
    record = readers.read(path)
    assert record.features.shape[1] == 1 and np.isfinite(record.features).all()
    assert len(record.events) >= 2 and record.dt == pytest.approx(0.01)


def test_npz(tmp_path):
    t, s = _sawtooth_stress(2000, 100.0)
    lv = np.random.default_rng(0).normal(size=(2000, 2))
    np.savez(tmp_path / "r.npz", time=t, logvar=lv, shear_stress=s)
    record = readers.read(tmp_path / "r.npz", channels=[2])
    np.testing.assert_allclose(record.features[:, 0], lv[:, 1], rtol=1e-6)
    assert len(record.events) == 9


@pytest.mark.parametrize("kind,match", [
    ("format", "format='other'"),
    ("stress", "/mech/shear_stress"),
    ("empty", "neither /ae nor /features/logvar"),
    ("attrs", "has no attribute 'sample_rate'"),
])
def test_bad_hdf5(tmp_path, kind, match):
    path = tmp_path / f"{kind}.h5"
    lv = np.zeros((100, 1), np.float32)
    if kind == "format":
        _write_h5(path, logvar=lv, fmt="other")
    elif kind == "stress":
        _write_h5(path, logvar=lv, stress=False)
    elif kind == "empty":
        _write_h5(path)
    else:
        _write_h5(path, ae=np.zeros((5000, 1), np.int16))
        with h5py.File(path, "a") as f:
            del f["ae"].attrs["sample_rate"]
    with pytest.raises(ValueError, match=match) as err:
        readers.read(path)
    assert str(path) in str(err.value)


def _csv(tmp_path, header, rows):
    path = tmp_path / "bad.csv"
    path.write_text(",".join(header) + "\n" + "\n".join(",".join(map(str, r)) for r in rows))
    return path


def test_bad_csv_and_paths(tmp_path, dds_dir):
    header = ["", "Time", "ShearStress", "Var_Ch1"]
    with pytest.raises(ValueError, match=r"bad.csv row 1 \(header\): missing column\(s\) "
                       r"TimeToStartFailure, TimeToEndFailure; found \(unnamed\), Time, "
                       r"ShearStress, Var_Ch1; --ttf derived"):
        readers.read(_csv(tmp_path, header, [[0, 0.1, 1.0, 5.0]]))
    with pytest.raises(ValueError, match=r"bad.csv row 2, column Time: 'x' is not a number$"):
        readers.read(_csv(tmp_path, header, [[0, "x", 1.0, 5.0]]), ttf="derived")
    with pytest.raises(ValueError, match=r"bad.csv row 3 \(t = 0.2 s\), column Var_Ch1: '-1' is "
                       r"not a positive variance$"):
        readers.read(_csv(tmp_path, header, [[0, 0.1, 1, 5], [1, 0.2, 2, -1]]), ttf="derived")
    with pytest.raises(ValueError, match=r"bad.csv row 3, column Time: 0.1 does not come after "
                       r"the previous row's 0.2"):
        readers.read(_csv(tmp_path, header, [[0, 0.2, 1, 5], [1, 0.1, 2, 5]]), ttf="derived")
    with pytest.raises(ValueError, match=r"p4581.csv: channels \[3\] not available"):
        readers.read(dds_dir / "p4581.csv", channels=[3])
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        readers.read(tmp_path / "nope.csv")
    (tmp_path / "r.parquet").write_text("")
    with pytest.raises(ValueError, match="unknown record format"):
        readers.read(tmp_path / "r.parquet")
    np.savez(tmp_path / "r.npz", time=np.arange(3.0))
    with pytest.raises(ValueError, match=r"r.npz: missing array\(s\) logvar, shear_stress; found time$"):
        readers.read(tmp_path / "r.npz")


def test_dds_columns_found_by_name_not_position(tmp_path, dds_dir):
    rows = np.genfromtxt(dds_dir / "p4581.csv", delimiter=",", skip_header=1)
    header = (dds_dir / "p4581.csv").read_text().splitlines()[0].split(",")
    order = [0, 8, 7, 6, 5, 4, 3, 2, 1]  # same columns, reversed after the index
    path = tmp_path / "shuffled.csv"
    np.savetxt(path, rows[:, order], delimiter=",", header=",".join(header[i] for i in order),
               comments="", fmt="%.17g")
    a, b = readers.read(path), readers.read(dds_dir / "p4581.csv")
    np.testing.assert_array_equal(a.features, b.features)
    np.testing.assert_array_equal(a.events, b.events)


def test_std_features_are_the_square_root_of_the_variance(tmp_path, dds_dir):
    # The reference PyTorch code's input: sqrt(Var_Ch1), named std_ch1 in every format.
    rows = np.genfromtxt(dds_dir / "p4581.csv", delimiter=",", skip_header=1)
    header = (dds_dir / "p4581.csv").read_text().splitlines()[0].split(",")
    var = rows[:, header.index("Var_Ch1")]
    std, logvar = (readers.read(dds_dir / "p4581.csv", features=k) for k in ("std", "logvar"))
    assert std.feature_names == ["std_ch1"] and logvar.feature_names == ["logvar_ch1"]
    np.testing.assert_allclose(std.features[:, 0], np.sqrt(var), rtol=1e-6)
    np.testing.assert_array_equal(std.targets["shear_stress"], logvar.targets["shear_stress"])
    lv = np.random.default_rng(0).normal(2, 0.1, (1000, 1)).astype(np.float32)
    h5 = readers.read(_write_h5(tmp_path / "f.h5", logvar=lv), features="std")
    assert h5.feature_names == ["std_ch1"]
    np.testing.assert_allclose(h5.features[:, 0], 10.0 ** (lv[:, 0] / 2), rtol=1e-6)
    t, s = _sawtooth_stress(2000, 100.0)
    np.savez(tmp_path / "r.npz", time=t, logvar=np.tile(lv[:, :1], (2, 1)), shear_stress=s)
    npz = readers.read(tmp_path / "r.npz", features="std")
    np.testing.assert_allclose(npz.features[:1000, 0], 10.0 ** (lv[:, 0] / 2), rtol=1e-6)
    with pytest.raises(ValueError, match=r"features must be one of \['logvar', 'std'\]"):
        readers.read(dds_dir / "p4581.csv", features="rms")


def _write_raw_npz(path, ae, **extra):
    t, s = _sawtooth_stress(int(11 * MECH_RATE), MECH_RATE)
    arrays = dict(ae=ae, ae_sample_rate=AE_RATE, time=t, shear_stress=s)
    arrays.update(extra)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


@pytest.mark.parametrize("compressed", [False, True])
def test_raw_npz_matches_hdf5(raw_h5, tmp_path, compressed):
    """The same waveform as an .npz member (stored: read at its offset; deflated: through
    zipfile) gives the HDF5 record's features, times and events."""
    path, ae = raw_h5
    npz = _write_raw_npz(tmp_path / "raw.npz", ae)
    if compressed:
        np.savez_compressed(npz, ae=ae, ae_sample_rate=AE_RATE,
                            **dict(zip(("time", "shear_stress"),
                                       _sawtooth_stress(int(11 * MECH_RATE), MECH_RATE))))
    got, ref = readers.read(npz, channels=[2, 1]), readers.read(path, channels=[2, 1])
    assert got.feature_names == ["logvar_ch2", "logvar_ch1"]
    np.testing.assert_array_equal(got.features, ref.features)
    np.testing.assert_allclose(got.time, ref.time)
    np.testing.assert_array_equal(got.events, ref.events)
    assert sorted(got.targets) == sorted(ref.targets)
    for k in ref.targets:
        np.testing.assert_allclose(got.targets[k], ref.targets[k], equal_nan=True)


@pytest.mark.parametrize("extra,match", [
    (dict(ae_sample_rate=None), "missing array.*ae_sample_rate"),
    (dict(ae_sample_rate=-1.0), "ae_sample_rate must be one positive number"),
    (dict(ttsf=np.zeros(3)), "ttsf/ttef .* need the logvar layout"),
    (dict(ae=np.zeros((2000, 2, 2), np.int16)), "array 'ae': AE must be"),
])
def test_bad_raw_npz(tmp_path, extra, match):
    ae = np.ones((20_000, 1), np.int16)
    path = _write_raw_npz(tmp_path / "bad.npz", extra.pop("ae", ae), **extra)
    with pytest.raises(ValueError, match=match) as err:
        readers.read(path)
    assert str(path) in str(err.value)


def test_raw_npz_channel_out_of_range(tmp_path):
    path = _write_raw_npz(tmp_path / "one.npz", np.ones((20_000, 1), np.int16))
    with pytest.raises(ValueError, match=r"channels \[2\] not available.*1..1"):
        readers.read(path, channels=[2])
