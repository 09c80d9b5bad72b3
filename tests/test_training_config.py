import keras
import numpy as np
import pytest

from labquake_tf.training import TrainConfig, compile_model, make_optimizer
from test_training_trainer import small_model


def test_config_round_trips_and_defaults_follow_the_paper():
    config = TrainConfig(epochs=7, strategy="mirrored", steps_per_epoch=3)
    assert TrainConfig.from_dict(config.to_dict()) == config
    default = TrainConfig()
    assert (default.batch_size, default.cosine_period, default.patience) == (128, 50, 20)


@pytest.mark.parametrize("bad, field", [({"epochs": 0}, "epochs"), ({"learning_rate": -1.0},
                                        "learning_rate"), ({"steps_per_epoch": 0}, "steps_per_epoch")])
def test_config_rejects_bad_values_by_name(bad, field):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**bad)


def test_from_dict_names_unknown_fields():
    with pytest.raises(ValueError, match="batchsize"):
        TrainConfig.from_dict({"batchsize": 4})


def test_optimizer_is_adamw_on_a_restarting_cosine_with_global_clipping():
    config = TrainConfig(learning_rate=1e-3, weight_decay=1e-4, clipnorm=0.5, cosine_period=2)
    opt = make_optimizer(config, steps_per_epoch=10)
    assert isinstance(opt, keras.optimizers.AdamW)
    assert opt.weight_decay == pytest.approx(1e-4) and opt.global_clipnorm == 0.5
    schedule = opt._learning_rate  # the schedule itself, not its current value
    lr = [float(schedule(step)) for step in (0, 10, 19, 20)]
    # period = 2 epochs x 10 steps: half-way at step 10, near zero at 19, restart at 20
    assert lr == pytest.approx([1e-3, 5e-4, 1e-3 * (1 + np.cos(np.pi * 19 / 20)) / 2, 1e-3],
                               rel=1e-5)


def test_compiled_model_reports_mse_loss_and_its_root():
    model = compile_model(small_model(), TrainConfig(), steps_per_epoch=1)
    x = np.random.default_rng(0).uniform(size=(8, 16, 1)).astype("float32")
    logs = model.train_on_batch(x, np.ones((8, 1), "float32"), return_dict=True)
    assert logs["rmse"] == pytest.approx(np.sqrt(logs["loss"]), rel=1e-5)


def _parse(argv, **defaults):
    import argparse

    from labquake_tf.training import config as config_lib

    parser = argparse.ArgumentParser()
    config_lib.add_arguments(parser, **defaults)
    return config_lib.from_args(parser.parse_args(argv))


def test_every_field_has_a_flag_and_flags_round_trip_to_the_config():
    import dataclasses

    config = _parse(["--epochs", "3", "--batch-size", "64", "--learning-rate", "0.01",
                     "--weight-decay", "0", "--clipnorm", "0.5", "--cosine-period", "4",
                     "--patience", "2", "--precision", "float32", "--strategy", "mirrored",
                     "--seed", "7", "--jit-compile", "on", "--max-steps", "9", "--progress", "2"])
    assert config == TrainConfig(epochs=3, batch_size=64, learning_rate=0.01, weight_decay=0.0,
                                 clipnorm=0.5, cosine_period=4, patience=2, precision="float32",
                                 strategy="mirrored", seed=7, jit_compile=True, steps_per_epoch=9,
                                 verbose=2)
    # No flag given: the dataclass's defaults, or the command's.
    assert _parse([]) == TrainConfig()
    assert _parse([], epochs=10).epochs == 10
    assert len(dataclasses.fields(TrainConfig)) == 13  # a new field needs a flag test above


@pytest.mark.parametrize("flag, value", [("--precision", "float8"), ("--strategy", "tpu"),
                                         ("--jit-compile", "maybe")])
def test_unknown_names_are_refused_with_the_choices(flag, value, capsys):
    with pytest.raises(SystemExit):
        _parse([flag, value])
    assert "invalid choice" in capsys.readouterr().err


def test_config_from_json_checks_names_too():
    with pytest.raises(ValueError, match="precision must be one of"):
        TrainConfig.from_dict({"precision": "float8"})
    assert TrainConfig(clipnorm=0).clipnorm is None  # 0 turns clipping off


def test_training_commands_share_the_flags():
    import argparse

    from labquake_tf.jobs import finetune, pretrain, tune

    def flags(module):
        parser = argparse.ArgumentParser()
        module.add_arguments(parser)
        return {a.dest for a in parser._actions}

    shared = {"batch_size", "learning_rate", "precision", "strategy", "steps_per_epoch",
              "jit_compile", "clipnorm", "seed", "patience", "verbose", "data"}
    for module in (pretrain, finetune, tune):
        assert shared <= flags(module), module.__name__


def test_weights_saved_with_optimizer_state_load_back_into_a_compiled_model(tmp_path):
    import warnings

    x, y = np.zeros((8, 16, 1), "float32"), np.zeros((8, 1), "float32")
    model = compile_model(small_model(), TrainConfig(), steps_per_epoch=1)
    model.fit(x, y, verbose=0, epochs=2)
    model.save_weights(tmp_path / "w.weights.h5")  # what backups and KerasTuner checkpoints hold
    again = compile_model(small_model(), TrainConfig(), steps_per_epoch=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "Skipping variable loading for optimizer" would raise
        again.load_weights(tmp_path / "w.weights.h5")
    assert int(again.optimizer.iterations) == 2
