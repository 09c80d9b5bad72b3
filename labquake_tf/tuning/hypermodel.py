"""``TCNHyperModel``: the TCN and its training recipe as a KerasTuner hyper-model.

``build`` draws the architecture and the optimiser settings and compiles through
``training.compile_model`` (the pretraining recipe); ``fit`` rebuilds the
datasets because ``seq_len`` and ``batch_size`` are hyper-parameters too.
"""

import dataclasses

import keras_tuner as kt
import numpy as np

from labquake_tf.data import pipeline
from labquake_tf.data.record import check_feature_names
from labquake_tf.models import build_tcn, input_length
from labquake_tf.training import TrainConfig, compile_model, finetune
from labquake_tf.training.trainer import count_steps
from labquake_tf.tuning import space as space_lib
from labquake_tf.tuning.objective import PhysicalRMSE


class TCNHyperModel(kt.HyperModel):
    """Searches blocks, filters, kernel size, dropout, seq_len and the optimiser.

    Args:
        data_dir: prepared shards + ``manifest.json`` (``labquake prepare``).
        space: search-space specs by name (``space.load_space``); missing names
            take the packaged defaults.
        targets: target names to predict; all of the manifest's when None.
        config: the ``TrainConfig`` the tuned values override.
        physical_rmse: also track ``rmse_phys`` (the ``val_rmse_phys`` objective).
        streamable: search ``build_tcn(streamable=True)`` models (their windows are
            ``models.input_length`` steps long; the shards must be prepared for the longest).
    """

    def __init__(self, data_dir, space=None, targets=None, config=None,
                 physical_rmse=False, seed=0, streamable=False, **kwargs):
        super().__init__(**kwargs)
        self.streamable = bool(streamable)
        self.data_dir = str(data_dir)
        self.manifest = pipeline.load_manifest(data_dir)
        self.space = {**space_lib.load_space(), **(space or {})}
        self.targets = list(targets or self.manifest["target_names"])
        self.config = config or TrainConfig()
        self.physical_rmse = physical_rmse
        self.seed = seed
        self._steps = {}

    def build(self, hp):
        params = {name: space_lib.declare(hp, name, self.space[name])
                  for name in space_lib.HYPERPARAMETERS}
        return self._compile(self.make_model(params), params)

    def make_model(self, params):
        return build_tcn(
            params["seq_len"], n_features=len(self.manifest["feature_names"]),
            n_targets=len(self.targets), filters=params["filters"],
            kernel_size=params["kernel_size"], blocks=params["blocks"],
            dropout=params["dropout"], streamable=self.streamable)

    def window(self, params):
        """Input steps of this trial's model."""
        return input_length(params["seq_len"], params["kernel_size"], params["blocks"],
                            self.streamable)

    def fit(self, hp, model, *args, **kwargs):
        kwargs.setdefault("verbose", 0)
        kwargs.setdefault("steps_per_epoch", self.config.steps_per_epoch)
        # The pipeline shuffles the training split; Keras cannot shuffle a dataset.
        kwargs.setdefault("shuffle", False)
        train, val = (self._dataset(hp.values, split) for split in ("train", "val"))
        return model.fit(train, validation_data=val, **kwargs)

    def train_config(self, params):
        """The ``TrainConfig`` with this trial's optimiser values."""
        return dataclasses.replace(
            self.config, learning_rate=params["learning_rate"],
            weight_decay=params["weight_decay"], clipnorm=params["clipnorm"],
            batch_size=params["batch_size"])

    def _compile(self, model, params):
        config = self.train_config(params)
        extra = [PhysicalRMSE.from_manifest(self.manifest, self.targets)] if self.physical_rmse else []
        return compile_model(model, config, self._steps_per_epoch(params), extra)

    def _dataset(self, params, split):
        return pipeline.make_dataset(
            self.data_dir, split, seq_len=self.window(params), targets=self.targets,
            batch_size=params["batch_size"], shuffle=split == "train", seed=self.seed,
            repeat=split == "train" and self.config.steps_per_epoch is not None)

    def _steps_per_epoch(self, params):
        # The cosine period is in epochs; the schedule counts optimizer steps.
        if self.config.steps_per_epoch:
            return self.config.steps_per_epoch
        key = self.window(params), params["batch_size"]
        if key not in self._steps:
            self._steps[key] = count_steps(self._dataset(params, "train"))
        return self._steps[key]


class FrozenDecoderHyperModel(TCNHyperModel):
    """Tunes seq_len and the training of a fresh head on top of a pretrained
    model's first ``blocks`` decoder blocks, frozen (``training.finetune``'s
    ``pretrained-frozen`` model). The architecture comes from the pretrained model.

    Args:
        pretrained: a ``LabquakeRegressor`` (its network and feature names are read).
        blocks: how many of its decoder blocks to keep.
    """

    def __init__(self, pretrained, data_dir, blocks, space=None, **kwargs):
        self.pretrained = pretrained.network
        self.blocks = blocks
        arch = finetune.architecture(self.pretrained)
        # The decoder is the pretrained one; frozen, its blocks skip their dropout.
        fixed = {"blocks": blocks, "filters": arch["filters"],
                 "kernel_size": arch["kernel_size"], "dropout": arch["dropout"]}
        super().__init__(data_dir, space={**(space or {}), **fixed},
                         **{**kwargs, "streamable": arch["streamable"]})
        check_feature_names(pretrained.preprocessor.feature_names,
                            self.manifest["feature_names"], "the pretrained model", f"{data_dir}")
        self._windows = {}

    def make_model(self, params):
        model = finetune.build_finetune_model(self.pretrained, params["seq_len"], self.blocks,
                                              n_targets=len(self.targets))
        if model.input_norm_source in ("refit", "adapt"):  # else the pretrained one (finetune's rule)
            finetune.adapt_input_norm(model, self._train_windows(self.window(params)))
        return model

    def _train_windows(self, seq_len):
        if seq_len not in self._windows:
            ds = pipeline.make_dataset(self.data_dir, "train", seq_len=seq_len,
                                       targets=self.targets, batch_size=1024)
            self._windows[seq_len] = np.concatenate([x.numpy() for x, _ in ds])
        return self._windows[seq_len]
