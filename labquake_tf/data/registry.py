"""Named datasets: the public DDS records and cached synthetic records.

The DDS CSVs are fetched with ``keras.utils.get_file`` (sha256-checked) into
``$LABQUAKE_CACHE_DIR`` (default ``~/.cache/labquake_tf``). Offline, point
``$LABQUAKE_DATA_DIR`` at a folder holding ``p4581.csv`` / ``p5198.csv``; they are
hash-checked all the same. Synthetic records are generated on first use by
``labquake_tf.simulate.generate`` and cached under a key that includes preset,
duration, seed and package version.
"""

import hashlib
import json
import os
import pathlib
import tempfile

import labquake_tf
from labquake_tf.data import checks, readers
from labquake_tf.errors import DataError, UsageError

_TCN_PAPER = "https://raw.githubusercontent.com/CountofGlamorgan/TCN_paper/main/data/"
_DDS_FILE = "newDF_TimeToFailure_from_{}_WITHOUT_subwindows.csv"

DATASETS = {
    "p4581": {"kind": "dds", "url": _TCN_PAPER + _DDS_FILE.format("3800_to_4100"),
              "sha256": "29c95398c97537bb4a9787dee91aaaf991a9ff32cf8ce48bf079f5db36fa1ed9"},
    "p5198": {"kind": "dds", "url": _TCN_PAPER + _DDS_FILE.format("6600_to_6900"),
              "sha256": "cdad9a0ba43ef5dd56e7846bc671bc7265eccf6bc70740321fd8a897d20ddfd6"},
    "synthetic-biaxial": {"kind": "synthetic", "preset": "biaxial", "duration": 400.0},
    "synthetic-dds": {"kind": "synthetic", "preset": "dds", "duration": 400.0},
    "synthetic-slow": {"kind": "synthetic", "preset": "slow", "duration": 400.0},
}
"""Name → how to get it. Synthetic durations are seconds of simulated record."""


def cache_dir():
    return pathlib.Path(os.environ.get("LABQUAKE_CACHE_DIR",
                                       pathlib.Path.home() / ".cache" / "labquake_tf"))


def dataset_path(name):
    """Local path of a named dataset, fetching or generating it if needed."""
    if name not in DATASETS:
        raise UsageError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    spec = DATASETS[name]
    return _dds_path(name, spec) if spec["kind"] == "dds" else _synthetic_path(spec)


def load_record(name_or_path, **options):
    """A ``Record`` from a registry name or a file path (``.csv``, ``.h5``, ``.npz``).

    ``options`` go to the reader: ``channels``, ``ttf``, ``lowpass_hz``,
    ``detrend``, ``min_drop``, ``rel_drop``, and for raw AE ``window``/``hop``;
    ``columns`` (``data.columns``) reads a raw record in another column layout.
    """
    name_or_path = os.fspath(name_or_path)
    if options.get("columns"):  # a raw record in its own column layout
        from labquake_tf.data import columns

        return columns.read(dataset_path(name_or_path) if name_or_path in DATASETS
                            else name_or_path, **options)
    options.pop("columns", None)
    if name_or_path in DATASETS:
        options.setdefault("name", name_or_path)
        return readers.read(dataset_path(name_or_path), **options)
    if not os.path.exists(name_or_path):
        raise FileNotFoundError(f"{name_or_path}: neither a file nor a dataset name "
                                f"(known: {', '.join(DATASETS)})")
    return readers.read(name_or_path, **options)


def _dds_path(name, spec):
    local = os.environ.get("LABQUAKE_DATA_DIR")
    if local:
        path = pathlib.Path(local) / f"{name}.csv"
        if not path.exists():
            raise FileNotFoundError(f"{path}: not found (LABQUAKE_DATA_DIR={local}); put "
                                    f"{name}.csv there, or unset LABQUAKE_DATA_DIR to download it")
        digest = checks.sha256(path)
        if digest != spec["sha256"]:
            raise DataError(f"{path}: sha256 {digest} does not match the registry's "
                            f"{spec['sha256']} for {name} (LABQUAKE_DATA_DIR={local}: an edited "
                            "or partial copy?)")
        return path
    import keras

    try:
        return pathlib.Path(keras.utils.get_file(
            f"{name}.csv", spec["url"], file_hash=spec["sha256"], hash_algorithm="sha256",
            cache_dir=str(cache_dir()), cache_subdir="dds"))
    except Exception as e:  # noqa: BLE001 -- keras raises a bare Exception on fetch failure
        raise DataError(f"{name}: download from {spec['url']} failed ({' '.join(str(e).split())}); "
                        f"offline, set LABQUAKE_DATA_DIR to a folder holding {name}.csv") from e


def _synthetic_path(spec, seed=0):
    from labquake_tf import simulate

    # The preset's parameters are in the key: editing a preset never serves a stale record.
    params = json.dumps(simulate.PRESETS[spec["preset"]].to_dict(), sort_keys=True)
    key = (f"{spec['preset']}-{spec['duration']:g}s-seed{seed}-v{labquake_tf.__version__}-"
           f"{hashlib.sha256(params.encode()).hexdigest()[:10]}")
    path = cache_dir() / "synthetic" / f"{key}.h5"
    if path.exists():
        return path

    path.parent.mkdir(parents=True, exist_ok=True)
    # Generate beside the target and rename: a killed run never leaves a
    # half-written file under the cache key.
    fd, tmp = tempfile.mkstemp(suffix=".h5.tmp", dir=path.parent)
    os.close(fd)
    try:
        simulate.generate(preset=spec["preset"], duration=spec["duration"], seed=seed,
                          out=tmp, mode="features",
                          progress=simulate.ProgressBar(f"generating {path.name}"))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path
