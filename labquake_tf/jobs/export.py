"""``labquake export MODEL --name NAME``: a model as a TF Serving SavedModel.

    labquake export p4581-shear-stress --name p4581         # saved_models/p4581/1/
    labquake export runs/finetune-p4581-shear_stress --name p4581 --version 3

MODEL is anything ``LabquakeRegressor.from_preset`` takes (a preset name or folder,
a run dir, an export, a ``.keras`` file); the export is ``task.export``'s
(``serving.export``).
"""

import pathlib

from labquake_tf.serving.export import export_model
from labquake_tf.task import LabquakeRegressor


def add_arguments(parser):
    parser.add_argument("model", help="a preset name (labquake presets), preset folder, run "
                                      "dir, exported SavedModel version dir or .keras file")
    parser.add_argument("--name", required=True, help="model name (saved_models/NAME/)")
    parser.add_argument("--version", type=int, default=None,
                        help="version number (default: next integer)")
    parser.add_argument("--base-dir", default="saved_models", help="export root")
    parser.add_argument("--force", action="store_true", help="replace an existing version")


def run(args):
    task = LabquakeRegressor.from_preset(args.model)
    task.metadata["source"] = (str(pathlib.Path(args.model).resolve())
                               if pathlib.Path(args.model).exists() else args.model)
    path = export_model(task, args.name, base_dir=args.base_dir, version=args.version,
                        force=args.force)
    print(f"exported {args.model} -> {path}")
    return 0
