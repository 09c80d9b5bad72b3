"""``labquake import-torch CKPT.pth --out RUN``: a reference PyTorch checkpoint as a run dir.

The run dir holds what ``finetune --from``, ``evaluate``, ``export`` and ``serve``
read: ``model.keras`` (exact weights, see ``models.torch_import``), ``config.json``
(architecture, BatchNorm epsilon, where the weights came from) and a manifest stub:
``feature_names`` (``std_ch1``… by default: the reference code feeds the AE standard
deviation), ``target_names``, ``units``, ``seq_len``, ``feature_kind``.

A checkpoint carries no scaler, and the reference notebooks min-max scale on data this
package never sees. So the stub has no ``scaler`` unless ``--scaler-from`` names a
prepared data dir whose (train-part) scaler to adopt: ``finetune`` and ``evaluate``
fit one on their own data as for any model, ``export`` (and so ``serve``) refuses
a model without one rather than guess physical units.
"""

import hashlib
import pathlib

import labquake_tf
from labquake_tf.data import features as features_lib
from labquake_tf.data.scaling import MinMaxScaler
from labquake_tf.errors import UsageError
from labquake_tf.files import (CONFIG_FILE, MANIFEST_FILE, MODEL_FILE, atomic_dir, read_json,
                               write_json)
from labquake_tf.models import torch_import
from labquake_tf.task import LabquakeRegressor
from labquake_tf.training.artifacts import save_model


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _key_style(keys):
    if any(".parametrizations.weight.original" in k for k in keys):
        return "parametrizations"
    return "weight_g/weight_v" if any(k.endswith(".weight_g") for k in keys) else "plain weight"


def _scaler_from(data_dir, feature_names, targets):
    """The min-max scaler of a prepared data dir, restricted to this model's columns."""
    manifest = read_json(pathlib.Path(data_dir) / MANIFEST_FILE)
    if list(manifest.get("feature_names", [])) != list(feature_names):
        raise ValueError(f"{data_dir}: features {manifest.get('feature_names')} differ from the "
                         f"imported model's {list(feature_names)} (see --features)")
    missing = [t for t in targets if t not in manifest.get("target_names", [])]
    if missing:
        raise ValueError(f"{data_dir}: has no target(s) {missing} to take a scaler from")
    scaler = manifest["scaler"]
    target_scaler = MinMaxScaler.from_dict(scaler["targets"]).select(targets)
    return {"features": scaler["features"], "targets": target_scaler.to_dict()}, manifest


def import_checkpoint(checkpoint, out, seq_len=None, features="std", targets=None,
                      dropout=0.1, scaler_from=None, force=False):
    """Convert ``checkpoint`` and write the run dir ``out``; returns ``(task, config)``.

    Everything is checked and converted before anything is written; the run dir
    appears whole (temporary folder, then rename) or not at all.
    """
    features_lib.check_kind(features)
    out = pathlib.Path(out)
    if out.exists() and any(out.iterdir()) and not force:
        raise FileExistsError(f"{out}: not empty; choose another --out or pass --force")
    state = torch_import.read_state_dict(checkpoint)
    arch, _, used = torch_import.keras_weights(state, str(checkpoint))
    if seq_len is not None and int(seq_len) != arch["seq_len"]:
        raise ValueError(f"{checkpoint}: holds a {arch['seq_len']}-step model (batch_norm1 and "
                         f"fc1 shapes), not --seq-len {seq_len}; fine-tune it to change the window")
    if targets is None:
        if arch["n_targets"] != 1:
            raise ValueError(f"{checkpoint}: predicts {arch['n_targets']} outputs; name them "
                             f"with --targets (from {list(labquake_tf.TARGETS)})")
        targets = ["shear_stress"]
    targets = list(targets)
    unknown = [t for t in targets if t not in labquake_tf.TARGETS]
    if unknown or len(targets) != arch["n_targets"] or len(set(targets)) != len(targets):
        raise UsageError(f"--targets {targets}: need {arch['n_targets']} distinct name(s) "
                         f"from {list(labquake_tf.TARGETS)} for {checkpoint}'s fc2 outputs")
    feature_names = [f"{features}_ch{c}" for c in range(1, arch["n_features"] + 1)]
    scaler = None
    if scaler_from is not None:
        scaler, _ = _scaler_from(scaler_from, feature_names, targets)

    model, _ = torch_import.convert(state, dropout=dropout, path=str(checkpoint))
    digest = _sha256(checkpoint)
    manifest = {
        "format": "labquake-import", "version": 1, "dataset": None,
        "feature_names": feature_names, "feature_kind": features, "target_names": targets,
        "units": {"features": features_lib.FEATURE_KINDS[features],
                  **{t: labquake_tf.TARGET_UNITS[t] for t in targets}},
        "seq_len": arch["seq_len"],
        "sources": [{"path": str(pathlib.Path(checkpoint).resolve()), "sha256": digest}],
        "package_version": labquake_tf.__version__,
    }
    if scaler is not None:
        manifest["scaler"] = scaler
        manifest["scaler_from"] = str(pathlib.Path(scaler_from).resolve())
    config = {
        "model": {**arch, "dropout": dropout, "norm_epsilon": torch_import.TORCH_BN_EPSILON},
        "preset": None,
        "import": {"from": str(checkpoint), "sha256": digest, "key_style": _key_style(used),
                   "tensors": len(used), "params": int(model.count_params())},
    }

    task = LabquakeRegressor.from_manifest(model, manifest, metadata={"import": config["import"]})
    with atomic_dir(out) as work:
        save_model(task, work / MODEL_FILE)
        write_json(work / MANIFEST_FILE, manifest)
        write_json(work / CONFIG_FILE, config)
    return task, config


def add_arguments(parser):
    parser.add_argument("checkpoint", help="a torch.save'd state_dict of the reference TCN (.pth)")
    parser.add_argument("--out", required=True, help="run dir to write")
    parser.add_argument("--seq-len", type=int, default=None,
                        help="expected window length (checked against the checkpoint's)")
    parser.add_argument("--features", choices=sorted(features_lib.FEATURE_KINDS), default="std",
                        help="what the model was trained on (default std: the reference code's "
                             "sqrt(AE variance), min-max scaled)")
    parser.add_argument("--targets", nargs="+", default=None, choices=labquake_tf.TARGETS,
                        help="names of fc2's outputs, in order (default shear_stress for one)")
    parser.add_argument("--dropout", type=float, default=0.1,
                        help="dropout of the decoder blocks when trained further (reference 0.1)")
    parser.add_argument("--scaler-from", default=None,
                        help="a prepared data dir (labquake prepare --features ...) whose min-max "
                             "scaler the model's inputs and outputs follow; without it the run "
                             "has no scaler and export refuses it until fine-tuned")
    parser.add_argument("--force", action="store_true", help="replace a non-empty --out")


def run(args):
    _, config = import_checkpoint(args.checkpoint, args.out, seq_len=args.seq_len,
                                  features=args.features, targets=args.targets,
                                  dropout=args.dropout, scaler_from=args.scaler_from,
                                  force=args.force)
    m, i = config["model"], config["import"]
    print(f"imported {args.checkpoint} ({i['tensors']} tensors, {i['key_style']} weight norm) -> "
          f"{args.out}: {m['blocks']} blocks, {m['filters']} filters, kernel {m['kernel_size']}, "
          f"{m['seq_len']} steps, {m['n_features']} feature(s) ({args.features}), "
          f"{m['n_targets']} output(s), {i['params']:,} parameters")
    return 0
