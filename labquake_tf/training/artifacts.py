"""Run directories as training writes them.

A run dir holds ``model.keras`` (the whole task once the job ends; the bare
network's best epoch while it trains), ``manifest.json`` (the data it trained on,
provenance) and ``config.json`` (model kwargs, preset, TrainConfig); see
CONTRIBUTING.md. Reading one back is ``LabquakeRegressor.from_preset``'s job.
"""

import pathlib

from labquake_tf.files import MANIFEST_FILE, atomic_path, read_json


def save_model(model, path):
    """``model.save`` through a temporary file, so a kill never leaves half a file."""
    with atomic_path(path) as tmp:
        model.save(tmp)


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
