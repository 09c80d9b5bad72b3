"""Run directories: what a training job leaves behind, and how to load it back.

A run dir holds ``model.keras``, ``manifest.json`` (the data it trained on) and
``config.json`` (model kwargs, preset, TrainConfig); see CONTRIBUTING.md.
"""

import json
import os
import pathlib
import zipfile

import keras

from labquake_tf.errors import DataError


def write_json(path, obj):
    """Write JSON through a temporary file so readers never see half of it."""
    path = pathlib.Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=_plain) + "\n")
    os.replace(tmp, path)


def read_json(path):
    path = pathlib.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def _plain(obj):
    # numpy scalars and paths, as they come out of configs and metrics
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, os.PathLike):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def model_files(path):
    """``(model.keras, manifest.json)`` paths for any kind of pretrained artefact."""
    path = pathlib.Path(path)
    if path.suffix == ".keras":
        return path, path.parent / "manifest.json"
    if (path / "saved_model.pb").exists():  # an exported SavedModel version dir
        return path / "assets" / "model.keras", path / "assets" / "manifest.json"
    if path.is_dir():
        return path / "model.keras", path / "manifest.json"
    raise FileNotFoundError(f"{path}: no run dir, .keras file or SavedModel version dir there")


def load_pretrained(path):
    """``(model, manifest)`` from a run dir, a ``.keras`` file with ``manifest.json``
    beside it, or an exported SavedModel version dir (``assets/``)."""
    model_path, manifest_path = model_files(path)
    for p in (model_path, manifest_path):
        if not p.exists():
            raise FileNotFoundError(f"{path}: {p.name} missing (looked for {p})")
    import labquake_tf.models  # noqa: F401  registers the custom layers for deserialisation

    if not zipfile.is_zipfile(model_path):  # keras would call it "File not found"
        raise DataError(f"{model_path}: not a Keras model (a .keras file is a zip archive; "
                        "this one is damaged or something else)")
    return keras.models.load_model(model_path), read_json(manifest_path)
