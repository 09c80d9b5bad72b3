"""Where a saved model is, and how the files of every format are read.

One model, four places it can be (``task.LabquakeRegressor.from_preset`` takes all):

* a preset folder: ``NAME/metadata.json`` (the model card) beside TF Serving
  version folders ``NAME/1/`` (the shipped presets live in ``labquake_tf/presets/``);
* an exported SavedModel version dir ``NAME/N/`` (its ``assets/model.keras``);
* a run dir written by ``pretrain``/``finetune``/``import-torch`` (``RUN/model.keras``);
* a ``.keras`` file.

A ``.keras`` file holds either a whole task (preprocessor, intervals and metadata in
its config) or, from before the task existed, the bare network with the data
manifest as a ``manifest.json`` beside it; ``locate`` says which.
"""

import json
import pathlib
import tempfile
import zipfile

import h5py
import keras

import labquake_tf.models.layers  # noqa: F401  registers the custom layers for deserialisation
from labquake_tf.errors import DataError
from labquake_tf.files import (EXPORT_MANIFEST, EXPORT_MODEL, MANIFEST_FILE,
                               MODEL_FILE, SAVED_MODEL, atomic_path, read_json)

SHIPPED_DIR = pathlib.Path(__file__).resolve().parents[1] / "presets"
"""The pretrained presets that ship with the package (``scripts/build_presets.py``)."""
CARD_FILE = "metadata.json"
TASK_CLASS = "LabquakeRegressor"


def shipped_names():
    """Names of the presets that ship with the package, sorted."""
    if not SHIPPED_DIR.is_dir():
        return []
    return sorted(p.name for p in SHIPPED_DIR.iterdir() if (p / CARD_FILE).is_file())


def shipped_card(name):
    """A shipped preset's model card (its ``metadata.json``)."""
    return read_json(SHIPPED_DIR / name / CARD_FILE)


def resolve(preset):
    """A preset name or a path -> the folder or file it names; unknown names are a
    one-line error listing the shipped presets."""
    path = pathlib.Path(preset)
    if path.exists():
        return path
    if str(preset) in shipped_names():
        return SHIPPED_DIR / str(preset)
    names = ", ".join(shipped_names()) or "none installed"
    raise FileNotFoundError(f"{preset}: no such file or folder, and not a shipped preset "
                            f"(shipped: {names}; `labquake presets` lists them)")


def versions(model_dir):
    """Integer-named version dirs holding a complete SavedModel, in TF Serving's sense."""
    model_dir = pathlib.Path(model_dir)
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir()
                  if p.name.isdigit() and (p / SAVED_MODEL).exists())


def locate(preset):
    """``(keras_file, legacy_manifest)`` for any of the four places; ``legacy_manifest``
    is the ``manifest.json`` path a bare network needs, None for a whole task."""
    path = resolve(preset)
    if path.is_dir():
        found = versions(path)
        if found and not (path / MODEL_FILE).exists():  # a preset / TF Serving base path
            path = path / str(found[-1])
        if (path / SAVED_MODEL).exists():
            keras_file, manifest = path / EXPORT_MODEL, path / EXPORT_MANIFEST
        else:
            keras_file, manifest = path / MODEL_FILE, path / MANIFEST_FILE
    elif path.suffix == ".keras":
        keras_file, manifest = path, path.parent / MANIFEST_FILE
    else:
        raise DataError(f"{preset}: not a preset, run dir, SavedModel export or .keras file")
    if not keras_file.exists():
        raise FileNotFoundError(f"{preset}: {keras_file.name} missing (looked for {keras_file})")
    if class_name(keras_file) == TASK_CLASS:
        return keras_file, None
    if not manifest.exists():
        raise DataError(f"{keras_file}: a bare network saved before tasks existed, and its "
                        f"manifest.json is missing (looked for {manifest})")
    return keras_file, manifest


def class_name(keras_file):
    """The class of the object a ``.keras`` file holds, read from its config alone."""
    try:
        with zipfile.ZipFile(keras_file) as archive:
            return json.loads(archive.read("config.json"))["class_name"]
    except (zipfile.BadZipFile, KeyError, ValueError):
        # keras would call it "File not found"
        raise DataError(f"{keras_file}: not a Keras model (a .keras file is a zip archive with "
                        "a config.json; this one is damaged or something else)") from None


def read_legacy(keras_file, manifest_file):
    """``(network, manifest)`` of a model saved before tasks existed."""
    manifest = read_json(manifest_file)
    missing = [k for k in ("feature_names", "target_names") if k not in manifest]
    if missing:  # the preprocessor is built from them
        raise DataError(f"{manifest_file}: no {', '.join(map(repr, missing))} (the model's "
                        "inputs and outputs): not the manifest of the data it was trained on")
    # compile=False: nothing continues the saved optimizer state, and restoring it into
    # a model whose layers are partly frozen skips it with a warning.
    return keras.models.load_model(keras_file, compile=False), manifest


def store_weights_as(keras_file, dtype):
    """Rewrite the weights inside a ``.keras`` file as ``dtype`` (e.g. float16 to halve a
    shipped preset); loading casts them back to the variables' own dtype."""
    keras_file = pathlib.Path(keras_file)
    with tempfile.TemporaryDirectory() as tmp:
        with zipfile.ZipFile(keras_file) as archive:
            archive.extractall(tmp)
        # A new file, not datasets replaced in place: HDF5 never gives deleted space back.
        source, target = pathlib.Path(tmp) / "model.weights.h5", pathlib.Path(tmp) / "cast.h5"
        with h5py.File(source, "r") as old, h5py.File(target, "w") as new:
            _copy_cast(old, new, dtype)
        target.replace(source)
        with atomic_path(keras_file) as out:
            with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
                for path in sorted(pathlib.Path(tmp).rglob("*")):
                    if path.is_file():
                        archive.write(path, path.relative_to(tmp))
    return keras_file


def _copy_cast(old, new, dtype):
    new.attrs.update(old.attrs)
    for name, item in old.items():
        if isinstance(item, h5py.Group):
            _copy_cast(item, new.create_group(name), dtype)
        else:
            values = item[()]
            new.create_dataset(name, data=values.astype(dtype) if item.dtype.kind == "f"
                               else values)
            new[name].attrs.update(item.attrs)


def weights_dtype(keras_file):
    """The dtype the floating weights of a ``.keras`` file are stored in."""
    with tempfile.TemporaryDirectory() as tmp:
        with zipfile.ZipFile(keras_file) as archive:
            archive.extract("model.weights.h5", tmp)
        kinds = set()
        with h5py.File(pathlib.Path(tmp) / "model.weights.h5", "r") as weights:
            weights.visititems(lambda _, obj: kinds.add(str(obj.dtype))
                               if isinstance(obj, h5py.Dataset) and obj.dtype.kind == "f" else None)
    return kinds.pop() if len(kinds) == 1 else sorted(kinds)


def folder_bytes(path):
    return sum(p.stat().st_size for p in pathlib.Path(path).rglob("*") if p.is_file())
