"""The ``labquake`` command: one subcommand per pipeline step.

Each subcommand lives in the module that does the work and exposes
``add_arguments(parser)`` and ``run(args) -> int``. Only the chosen module is
imported, so ``labquake --help`` does not pay for importing TensorFlow.
"""

import argparse
import importlib
import sys

COMMANDS = {
    "simulate": ("labquake_tf.simulate.cli", "generate a synthetic lab-quake record (HDF5)"),
    "prepare": ("labquake_tf.data.prepare", "turn a dataset into TFRecord shards + manifest"),
    "pretrain": ("labquake_tf.training.pretrain", "pretrain a TCN and export it"),
    "finetune": ("labquake_tf.training.finetune", "fine-tune the first K blocks of a pretrained TCN"),
    "import-torch": ("labquake_tf.training.import_torch", "a reference PyTorch TCN checkpoint (.pth) as a run dir"),
    "evaluate": ("labquake_tf.evaluation.cli", "score a model in physical units, with plots"),
    "transfer-matrix": ("labquake_tf.evaluation.transfer", "zero-shot / fine-tuned RMSE across datasets"),
    "tune": ("labquake_tf.tuning.tune", "KerasTuner search over the TCN and its training"),
    "export": ("labquake_tf.serving.export", "export a model as a TF Serving SavedModel"),
    "serving-config": ("labquake_tf.serving.config", "write a TF Serving models.config"),
    "serve": ("labquake_tf.serving.server", "serve SavedModels over TF Serving's REST API"),
    "predict": ("labquake_tf.serving.predict", "stream a record through a REST server"),
    "stream": ("labquake_tf.streaming.cli", "real-time predictions and alarms on a live AE stream"),
}


def _usage():
    lines = ["usage: labquake COMMAND [options]", "", "commands:"]
    lines += [f"  {name:<16} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run 'labquake COMMAND --help' for a command's options."]
    return "\n".join(lines)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"labquake: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name, help_ = COMMANDS[name]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"labquake {name}", description=help_)
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    return module.run(args) or 0


if __name__ == "__main__":
    sys.exit(main())
