"""Files every step writes: atomically (temporary name + rename), JSON, history CSVs.

A reader never sees half a file, and a killed writer leaves the old file (or none).
The one place for these, below every package (imports nothing of labquake_tf).
"""

import contextlib
import csv
import json
import math
import os
import pathlib
import shutil
import tempfile


# A run dir (the training jobs write it; evaluate, finetune --from, export read it) and a
# prepared data dir (its manifest). Named once here so writers and readers agree.
MODEL_FILE = "model.keras"
MANIFEST_FILE = "manifest.json"
CONFIG_FILE = "config.json"
HISTORY_FILE = "history.csv"
METRICS_FILE = "metrics.json"
DATA_FOLDER = "data"
PLOTS_FOLDER = "plots"
BACKUP_FOLDER = "backup"
TENSORBOARD_FOLDER = "tensorboard"

# An exported SavedModel version dir (serving.export writes it, training.artifacts and
# the readers find a model in it): the graph, and beside it in assets/ the Keras model,
# the data manifest and the metadata, so fine-tuning and scoring can start from an export.
SAVED_MODEL = "saved_model.pb"
ASSETS_FOLDER = "assets"
EXPORT_MODEL = f"{ASSETS_FOLDER}/{MODEL_FILE}"
EXPORT_MANIFEST = f"{ASSETS_FOLDER}/{MANIFEST_FILE}"
EXPORT_METADATA = f"{ASSETS_FOLDER}/metadata.json"


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path`` (same suffix: writers pick the format by
    it); on success it replaces ``path``, on error it is removed."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(path, prefix=None):
    """Yield a new empty folder beside ``path``; on success it takes ``path``'s place
    (an existing ``path`` is moved aside first and removed after), on error it is
    removed. Its name starts with a dot, so a TF Serving watching the parent, which
    reads only integer-named folders, never sees it half-written."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=prefix or f".{path.name}-", dir=path.parent))
    tmp.chmod(0o755)  # mkdtemp's 0700 would hide it from a server run as another user
    try:
        yield tmp
        if path.exists():
            old = pathlib.Path(tempfile.mkdtemp(prefix=f".{path.name}-replaced-",
                                                dir=path.parent))
            os.replace(path, old / "old")
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_text(path, text):
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path, obj):
    write_text(path, json.dumps(obj, indent=2, default=_plain) + "\n")


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


def read_history_rows(path, before_epoch=None):
    """history.csv (Keras' CSVLogger format) as one dict per epoch, optionally only
    the epochs before ``before_epoch``; "NA" (a value missing) becomes NaN."""
    path = pathlib.Path(path)
    if not path.exists():
        return []
    with open(path, newline="") as f:
        rows = [{k: int(v) if k == "epoch" else float("nan" if v == "NA" else v)
                 for k, v in r.items()} for r in csv.DictReader(f)]
    return [r for r in rows if before_epoch is None or r["epoch"] < before_epoch]


def read_history(path):
    """history.csv as ``{column: [values]}``, without all-NaN columns (a resumed fit can
    log a column its first part did not)."""
    rows = read_history_rows(path)
    if not rows:
        return {}
    history = {key: [r[key] for r in rows] for key in rows[0]}
    return {k: v for k, v in history.items()
            if k == "epoch" or not all(map(math.isnan, v))}


def write_history(path, rows):
    """Rows as history.csv, atomically (the custom loop rewrites it every epoch)."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
