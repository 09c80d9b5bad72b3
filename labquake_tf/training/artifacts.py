"""Run directories: what a training job leaves behind, and how to load it back.

A run dir holds ``model.keras``, ``manifest.json`` (the data it trained on) and
``config.json`` (model kwargs, preset, TrainConfig); see CONTRIBUTING.md.
"""

import pathlib
import zipfile

import keras

import labquake_tf.models  # noqa: F401  registers the custom layers for deserialisation
from labquake_tf.errors import DataError
from labquake_tf.files import (ASSETS_FOLDER, CONFIG_FILE, DATA_FOLDER, EXPORT_MANIFEST,
                               EXPORT_MODEL, MANIFEST_FILE, MODEL_FILE, SAVED_MODEL)
from labquake_tf.files import atomic_path, read_json, write_json  # noqa: F401  (their home before)


def save_model(model, path):
    """``model.save`` through a temporary file, so a kill never leaves half a file."""
    with atomic_path(path) as tmp:
        model.save(tmp)


def model_files(path):
    """``(model.keras, manifest.json)`` paths for any kind of pretrained artefact."""
    path = pathlib.Path(path)
    if path.suffix == ".keras":
        return path, path.parent / MANIFEST_FILE
    if (path / SAVED_MODEL).exists():  # an exported SavedModel version dir
        return path / EXPORT_MODEL, path / EXPORT_MANIFEST
    if path.is_dir():
        return path / MODEL_FILE, path / MANIFEST_FILE
    raise FileNotFoundError(f"{path}: no run dir, .keras file or SavedModel version dir there")


def run_data_dir(path, manifest=None):
    """The prepared shards a run trained on, ``RUN/data``; None for an export (which
    carries no data: re-prepare from its manifest's ``request``).

    A training job that reuses prepared data elsewhere (``--data``) records that
    folder as ``data_dir`` in ``RUN/config.json``; it is used when ``RUN/data`` is
    absent. Either must hold the manifest the run trained on (same scalers and
    splits), or scoring would not be on the run's own split.
    """
    model_path, _ = model_files(path)
    base = model_path.parent
    if base.name == ASSETS_FOLDER and (base.parent / SAVED_MODEL).exists():
        return None
    candidates = [base / DATA_FOLDER]
    config = base / CONFIG_FILE
    if config.exists():
        recorded = read_json(config).get("data_dir")
        if recorded:
            candidates.append(pathlib.Path(recorded))
    for data in candidates:
        if (data / MANIFEST_FILE).exists():
            if manifest is not None:
                theirs = read_json(data / MANIFEST_FILE)
                for key in ("scaler", "splits", "feature_names"):
                    if key in manifest and theirs.get(key) != manifest[key]:
                        raise DataError(f"{data}: its manifest's {key!r} differs from the "
                                         f"run's {base / 'manifest.json'}: not the data the "
                                         "run trained on")
            return data
    raise DataError(
        f"{base}: the run's prepared data is missing (looked for "
        f"{', '.join(str(c / 'manifest.json') for c in candidates)}); restore it, or rebuild it "
        "with `labquake prepare` and the arguments in the run's manifest.json 'request'")


def load_pretrained(path):
    """``(model, manifest)`` from a run dir, a ``.keras`` file with ``manifest.json``
    beside it, or an exported SavedModel version dir (``assets/``)."""
    model_path, manifest_path = model_files(path)
    for p in (model_path, manifest_path):
        if not p.exists():
            raise FileNotFoundError(f"{path}: {p.name} missing (looked for {p})")
    if not zipfile.is_zipfile(model_path):  # keras would call it "File not found"
        raise DataError(f"{model_path}: not a Keras model (a .keras file is a zip archive; "
                        "this one is damaged or something else)")
    # compile=False: no caller continues the saved optimizer state, and restoring it
    # into a model whose layers are partly frozen skips it with a warning.
    return keras.models.load_model(model_path, compile=False), read_json(manifest_path)


def reuse_prepared(data_dir, seq_len, targets):
    """The manifest of an already prepared ``data_dir``, as a run on it records it.

    The shards must hold exactly ``targets`` (the run's manifest and its scalers then
    describe the model's outputs) and windows of at least ``seq_len`` steps; the
    manifest's ``seq_len`` becomes the model's.
    """
    manifest = read_json(pathlib.Path(data_dir) / MANIFEST_FILE)
    if list(targets) != list(manifest["target_names"]):
        raise ValueError(f"{data_dir}: prepared for targets {manifest['target_names']}, the "
                         f"run trains {list(targets)}; prepare it with --targets "
                         f"{' '.join(targets)} or pick those targets")
    if manifest["seq_len"] < seq_len:
        raise ValueError(f"{data_dir}: prepared for windows of {manifest['seq_len']} steps, "
                         f"the model reads {seq_len}; prepare it again with --seq-len {seq_len}")
    return {**manifest, "seq_len": int(seq_len)}
