"""Tuners over ``TCNHyperModel``: Hyperband, Bayesian optimisation, random search.

Distributed tuning is KerasTuner's own: start one process with
``KERASTUNER_TUNER_ID=chief`` and any number with ``KERASTUNER_TUNER_ID=tuner<N>``,
all with the same ``KERASTUNER_ORACLE_IP`` / ``KERASTUNER_ORACLE_PORT`` and
project dir. The chief's oracle hands out trials over gRPC and it alone holds
``oracle.trials``; workers' ``tuner.oracle`` is a proxy.
"""

import pathlib
import time

import keras_tuner as kt

TUNERS = {"hyperband": kt.Hyperband, "bayesian": kt.BayesianOptimization, "random": kt.RandomSearch}


def make_tuner(kind, hypermodel, objective, project_dir, max_trials=None, max_epochs=10,
               overwrite=False, strategy=None, seed=0):
    """A tuner writing to ``project_dir``; an existing project is resumed unless ``overwrite``."""
    if kind not in TUNERS:
        raise ValueError(f"tuner {kind!r}: expected one of {', '.join(TUNERS)}")
    project_dir = pathlib.Path(project_dir)
    common = dict(hypermodel=hypermodel, objective=objective, seed=seed, overwrite=overwrite,
                  directory=str(project_dir.parent), project_name=project_dir.name,
                  distribution_strategy=strategy)
    if kind == "hyperband":
        tuner = kt.Hyperband(max_epochs=max_epochs, factor=3, **common)
        # HyperbandOracle takes no max_trials, but the base Oracle stops on it.
        tuner.oracle.max_trials = max_trials
    else:
        tuner = TUNERS[kind](max_trials=max_trials or 10, **common)
    return tuner


def is_coordinator(tuner):
    """True where the oracle lives (a local search or the chief), so results can be read."""
    return isinstance(tuner.oracle, kt.Oracle)


def stop_after(tuner, seconds):
    """Launches no new trial once ``seconds`` have passed; running ones finish.

    Only the process holding the oracle can enforce it, so workers ignore it.
    """
    if not seconds or not is_coordinator(tuner):
        return
    deadline = time.monotonic() + seconds
    populate = tuner.oracle.populate_space

    def populate_space(trial_id):
        if time.monotonic() > deadline:
            return {"status": kt.engine.trial.TrialStatus.STOPPED, "values": None}
        return populate(trial_id)

    tuner.oracle.populate_space = populate_space
