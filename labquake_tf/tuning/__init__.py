"""KerasTuner searches: the hyper-models, search space, objective and tuners
(``labquake tune`` is ``jobs.tune``)."""
