"""Jobs: the commands that compose several layers (data, models, training, evaluation,
tuning, serving) into one run. Nothing below imports a job; see CONTRIBUTING.md
("Layers").

``pretrain``, ``finetune``, ``evaluate``, ``tune``, ``transfer_matrix``,
``import_torch`` and ``simulate`` are ``labquake`` subcommands: each exposes
``add_arguments(parser)`` and ``run(args)``, plus the job as a function
(``pretrain.pretrain``, ``finetune.finetune``, ``evaluate.evaluate``, ...).
"""
