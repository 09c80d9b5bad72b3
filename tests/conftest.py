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


@pytest.fixture(scope="session")
def dds_dir():
    """The folder with the public DDS CSVs (LABQUAKE_DATA_DIR); skips when absent."""
    path = os.environ.get("LABQUAKE_DATA_DIR")
    if not path or not pathlib.Path(path, "p4581.csv").exists():
        pytest.skip("public DDS records not available (set LABQUAKE_DATA_DIR)")
    return pathlib.Path(path)
