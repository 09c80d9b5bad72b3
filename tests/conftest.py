"""Test session set-up: offline data, quiet TensorFlow, two logical CPUs.

The CPU is split into two logical devices before TensorFlow initialises so
MirroredStrategy can be tested without GPUs.
"""

import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DDS = ROOT.parent / "shared" / "data" / "dds"
if "LABQUAKE_DATA_DIR" not in os.environ and SHARED_DDS.is_dir():
    os.environ["LABQUAKE_DATA_DIR"] = str(SHARED_DDS)

import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])


DDS_UNAVAILABLE = []


@pytest.fixture(scope="session")
def dds_dir():
    """The folder with the public DDS CSVs: LABQUAKE_DATA_DIR, else the registry's download
    (checksummed, cached); skips only when neither works (offline, no local copy)."""
    path = os.environ.get("LABQUAKE_DATA_DIR")
    if path and pathlib.Path(path, "p4581.csv").exists():
        return pathlib.Path(path)
    from labquake_tf.data import registry

    try:
        found = [registry.dataset_path(name) for name in ("p4581", "p5198")]
    except Exception as e:  # noqa: BLE001 -- offline: any fetch failure means "skip"
        DDS_UNAVAILABLE.append(f"{type(e).__name__}: {' '.join(str(e).split())[:160]}")
        pytest.skip("public DDS records not available (offline and LABQUAKE_DATA_DIR unset)")
    os.environ["LABQUAKE_DATA_DIR"] = str(found[0].parent)
    return found[0].parent


@pytest.fixture(scope="session")
def sim_record(tmp_path_factory):
    """A simulated DDS-like record (HDF5 log-variance features, 150 s, about 25 stick-slip
    cycles; seconds to make): for tests that need a lab-quake record, not the public one."""
    from labquake_tf.simulate import generate

    out = tmp_path_factory.mktemp("sim") / "sim-dds.h5"
    return pathlib.Path(generate(preset="dds", duration=150.0, seed=0, out=str(out),
                                 spinup=20.0, hop=0.05, window=0.1))


def pytest_terminal_summary(terminalreporter):
    skipped = [r for r in terminalreporter.stats.get("skipped", [])
               if "public DDS records not available" in str(r.longrepr)]
    if skipped:
        terminalreporter.write_line(
            f"{len(skipped)} test(s) skipped: they need the public DDS records, which could not "
            f"be downloaded ({DDS_UNAVAILABLE[0] if DDS_UNAVAILABLE else 'offline'}); set "
            "LABQUAKE_DATA_DIR to a folder holding p4581.csv and p5198.csv")
