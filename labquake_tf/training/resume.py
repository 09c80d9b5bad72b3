"""Back up a ``fit`` at every epoch end so a killed run resumes where it was, best included.

Keras' ``BackupAndRestore`` restores weights, optimizer and epoch, but
``ModelCheckpoint`` and ``EarlyStopping`` start again from ``best = inf`` and a fresh
patience: a resumed run could then stop late and overwrite ``model.keras`` with an
epoch worse than one before the kill. ``RunBackup`` snapshots, at each epoch end,
the weights (optimizer included), the epoch, and the state of the callbacks it is
given (best value, wait count, best epoch, best weights), and puts them back at
the start of the next ``fit``. It must come after those callbacks in the list:
their ``on_train_begin`` resets the state it restores, and their ``on_epoch_end``
updates the state it saves.

A snapshot is a folder written under a temporary name and renamed, and ``latest``
names the current one (replaced atomically), so a kill at any point leaves one
complete snapshot. The run's ``signature`` (model architecture, data, training
knobs) is stored with it: resuming with another one is refused.
"""

import json
import os
import pathlib
import shutil

import numpy as np

import keras

STATE_ATTRS = ("best", "wait", "best_epoch", "stopped_epoch")


class ResumeMismatch(ValueError):
    """The backup in a run dir was written by a run with another model, data or config."""


def latest_snapshot(backup_dir):
    """The folder of the last complete snapshot, or None."""
    pointer = pathlib.Path(backup_dir) / "latest"
    if not pointer.exists():
        return None
    snap = pointer.parent / pointer.read_text().strip()
    return snap if (snap / "state.json").exists() else None


def resumed_epoch(backup_dir):
    """Epochs the backup in ``backup_dir`` has finished (0 when there is none)."""
    snap = latest_snapshot(backup_dir)
    return json.loads((snap / "state.json").read_text())["epoch"] if snap else 0


def check_signature(backup_dir, signature):
    """Raise ``ResumeMismatch`` naming what differs when the backup is another run's."""
    snap = latest_snapshot(backup_dir)
    if snap is None:
        return
    saved = json.loads((snap / "state.json").read_text()).get("signature")
    ours = _jsonable(signature)
    if saved == ours:
        return
    differs = sorted(k for k in set(saved or {}) | set(ours)
                     if (saved or {}).get(k) != ours.get(k))
    raise ResumeMismatch(
        f"{backup_dir}: the interrupted run there used another {', '.join(differs)}; "
        "resume it with the same settings, or delete that run dir / choose another --out")


def write_atomic(backup_dir, name, write):
    """Call ``write(tmp_folder)``, then publish the folder as ``backup_dir/name``."""
    backup_dir = pathlib.Path(backup_dir)
    backup_dir.mkdir(parents=True, exist_ok=True)
    tmp = backup_dir / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    write(tmp)
    final = backup_dir / name
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    pointer_tmp = backup_dir / ".latest.tmp"
    pointer_tmp.write_text(name)
    os.replace(pointer_tmp, backup_dir / "latest")
    for old in backup_dir.iterdir():
        if old.is_dir() and old.name != name:
            shutil.rmtree(old, ignore_errors=True)


class RunBackup(keras.callbacks.Callback):
    def __init__(self, backup_dir, signature, callbacks=()):
        super().__init__()
        self.backup_dir = pathlib.Path(backup_dir)
        self.signature = _jsonable(signature)
        self.watched = list(callbacks)

    def on_train_begin(self, logs=None):
        snap = latest_snapshot(self.backup_dir)
        if snap is None:
            return
        check_signature(self.backup_dir, self.signature)
        state = json.loads((snap / "state.json").read_text())
        optimizer = self.model.optimizer
        if optimizer is not None and not optimizer.built:
            optimizer.build(self.model.trainable_variables)
        self.model.load_weights(snap / "model.weights.h5")
        self.model._initial_epoch = state["epoch"]
        for i, (callback, saved) in enumerate(zip(self.watched, state["callbacks"])):
            for attr, value in saved.items():
                setattr(callback, attr, value)
            weights = snap / f"best_weights_{i}.npz"
            if weights.exists():
                with np.load(weights) as f:
                    callback.best_weights = [f[f"arr_{j}"] for j in range(len(f.files))]

    def on_epoch_end(self, epoch, logs=None):
        def write(folder):
            self.model.save_weights(folder / "model.weights.h5")
            states = []
            for i, callback in enumerate(self.watched):
                states.append({a: _plain(getattr(callback, a)) for a in STATE_ATTRS
                               if hasattr(callback, a)})
                if getattr(callback, "best_weights", None) is not None:
                    np.savez(folder / f"best_weights_{i}.npz", *callback.best_weights)
            (folder / "state.json").write_text(json.dumps(
                {"epoch": epoch + 1, "signature": self.signature, "callbacks": states}))

        write_atomic(self.backup_dir, f"epoch-{epoch + 1}", write)

    def on_train_end(self, logs=None):
        shutil.rmtree(self.backup_dir, ignore_errors=True)


def _plain(value):
    if value is None or isinstance(value, (int, float, str)):
        return value
    return np.asarray(value).item()


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=str, sort_keys=True))
