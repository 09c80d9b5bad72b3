"""``LabquakeRegressor``: one Keras object from AE to shear stress or time to failure.

The roles are keras-hub's. The *backbone* is the TCN decoder (``decoder_block_i``
layers); the *heads* are one regression head or an ensemble of them, with a
calibrated interval; the *preprocessor* (``models.Preprocessor``) holds the feature
kind and names, the window and the scalers fitted on the training part. Together
they are one functional Keras model, registered serialisable: ``save("x.keras")``
writes one file, ``save_to_preset(dir)`` a folder that is also a TF Serving model
base path, and ``from_preset`` reads either back, plus run dirs and exports.

Example:
    >>> import labquake_tf as lq
    >>> task = lq.LabquakeRegressor.from_preset("p4581-shear-stress")
    >>> out = task.predict("p4581")          # MPa, with a 90 % interval
    >>> sorted(out)[:3]
    ['shear_stress', 'shear_stress_lower', 'shear_stress_upper']
"""

import contextlib
import json
import os
import pathlib
import tempfile

import keras
import numpy as np

from labquake_tf.data import prepare
from labquake_tf.data.record import Record, channels_of, check_feature_names
from labquake_tf.data.registry import load_record
from labquake_tf.data.windows import cut
from labquake_tf.errors import DataError
from labquake_tf.evaluation.metrics import evaluate_model, predict_windows
from labquake_tf.files import DATA_FOLDER, MANIFEST_FILE, read_json, write_json
from labquake_tf.models import decoder_blocks, is_streamable
from labquake_tf.models import saving
from labquake_tf.models.heads import head_layers, member_outputs
from labquake_tf.models.preprocessor import Preprocessor
from labquake_tf.serving.export import export_task
from labquake_tf.streaming.streamer import Streamer


@keras.saving.register_keras_serializable(package="labquake_tf")
class LabquakeRegressor(keras.Model):
    """A TCN with its preprocessing, heads and interval calibration.

    Args:
        network: the functional TCN (``models.build_tcn``; with ensemble heads from
            ``models.heads.add_heads``), scaled inputs to scaled outputs.
        preprocessor: a ``models.Preprocessor`` for that network.
        intervals: the split-conformal calibration (``evaluation.intervals``), or None.
        metadata: provenance the task carries but never reads to run: the data it
            was trained on (``"data"``: record sha256, splits, fitted processing),
            its training (``"training"``) and the model card (``"card"``).

    Example:
        >>> from labquake_tf.models import build_tcn, Preprocessor
        >>> net = build_tcn(seq_len=16, filters=8, kernel_size=3, blocks=3)
        >>> pre = Preprocessor(["logvar_ch1"], ["shear_stress"], seq_len=16,
        ...                    feature_scaler={"min": [-1.0], "max": [1.0]},
        ...                    target_scaler={"min": [0.0], "max": [2.0]})
        >>> task = LabquakeRegressor(net, pre)
        >>> task.predict(np.zeros((4, 16, 1)))["shear_stress"].shape
        (4,)
    """

    def __init__(self, network, preprocessor, intervals=None, metadata=None, **kwargs):
        kwargs.setdefault("name", network.name)
        # The task's graph is the network's own: its layers (decoder_block_i, heads)
        # are the task's, and keras saves them once.
        super().__init__(inputs=network.inputs[0], outputs=network.outputs, **kwargs)
        if int(network.input_shape[1]) != preprocessor.input_len:
            raise ValueError(f"the network reads {network.input_shape[1]} steps, its "
                             f"preprocessor {preprocessor.input_len}")
        self.network = network
        self.preprocessor = preprocessor
        self.intervals = intervals or None
        self.metadata = _jsonable(metadata or {})

    # -- roles ---------------------------------------------------------------------
    @property
    def backbone(self):
        """The decoder as a Keras model: ``ae_features`` -> the last block's output.

        Example:
            >>> task.backbone.output.shape                         # doctest: +SKIP
            (None, 64, 32)
        """
        return keras.Model(self.network.inputs[0], head_layers(self.network)[0].output,
                           name=f"{self.network.name}_backbone")

    @property
    def heads(self):
        """One list of head layers per member (one member for a single head).

        Example:
            >>> [layer.name for layer in task.heads[0]]            # doctest: +SKIP
            ['member0_head_conv', 'member0_flatten', 'member0_head_dense', ...]
        """
        layers = head_layers(self.network)[1] if len(member_outputs(self.network)) == 1 else None
        if layers is not None:
            return [layers]
        names = [layer.name for layer in self.network.layers]
        return [[self.network.get_layer(n) for n in names if n.startswith(f"member{i}_")]
                for i in range(len(member_outputs(self.network)))]

    @property
    def target_names(self):
        """The targets it predicts, in output order.

        Example:
            >>> task.target_names                                  # doctest: +SKIP
            ['shear_stress']
        """
        return list(self.preprocessor.target_names)

    @property
    def card(self):
        """The model card (data, splits, command, seed, test metrics), when it has one.

        Example:
            >>> task.card["test_metrics"]["shear_stress"]["rmse"]  # doctest: +SKIP
        """
        return self.metadata.get("card", {})

    # -- serialisation ---------------------------------------------------------------
    def get_config(self):
        return {"name": self.name,
                "network": keras.saving.serialize_keras_object(self.network),
                "preprocessor": keras.saving.serialize_keras_object(self.preprocessor),
                "intervals": self.intervals, "metadata": self.metadata}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        # Tasks load uncompiled (load_model(compile=False) does not reach a nested
        # model): a trained network's compile config names the package's AdamW or a
        # tuner metric, which a fresh interpreter has not registered.
        network = {k: v for k, v in config.pop("network").items() if k != "compile_config"}
        network = keras.saving.deserialize_keras_object(network)
        preprocessor = keras.saving.deserialize_keras_object(config.pop("preprocessor"))
        return cls(network, preprocessor, **config)

    @classmethod
    def from_manifest(cls, network, manifest, metadata=None):
        """A task from a network and the manifest of the data it was trained on (what
        runs and exports held before tasks existed). The manifest's ``intervals``
        become the task's; the manifest itself is kept as ``metadata["data"]``.

        Example:
            >>> task = LabquakeRegressor.from_manifest(network, manifest)  # doctest: +SKIP
        """
        manifest = dict(manifest)
        intervals = manifest.pop("intervals", None)
        manifest.setdefault("seq_len", int(network.input_shape[1]))
        if is_streamable(network):  # the manifest's window is the head's, not the input's
            manifest["seq_len"] = int(network.get_layer("history_crop").output.shape[1])
        preprocessor = Preprocessor.from_manifest(manifest, int(network.input_shape[1]))
        return cls(network, preprocessor, intervals, {"data": manifest, **(metadata or {})})

    @classmethod
    def from_preset(cls, preset):
        """Load a task from a shipped preset name (``labquake_tf.presets()``), a preset
        folder, a run dir (pretrain, finetune, import-torch), an exported SavedModel
        version dir or a ``.keras`` file.

        Example:
            >>> task = LabquakeRegressor.from_preset("p5198-ttsf")
            >>> task.target_names
            ['ttsf']
        """
        keras_file, legacy_manifest = saving.locate(preset)
        if legacy_manifest is None:
            task = keras.saving.load_model(keras_file, compile=False)
        else:
            network, manifest = saving.read_legacy(keras_file, legacy_manifest)
            task = cls.from_manifest(network, manifest)
        # Where it was loaded from THIS time: a shipped preset must not name its build dir.
        task.metadata["loaded_from"] = str(preset)
        return task

    def save_to_preset(self, preset_dir, weights_dtype=None, card=None, version=1):
        """Write ``preset_dir/``: ``metadata.json`` (the model card) and the version
        folder ``preset_dir/VERSION/`` (TF Serving's layout, ``assets/model.keras``
        the task), so ``tensorflow_model_server --model_base_path=preset_dir`` serves
        it and ``from_preset(preset_dir)`` loads it. ``weights_dtype="float16"``
        halves the Keras copy of the weights (loading casts them back).

        Example:
            >>> task.save_to_preset("presets/my-exp")          # doctest: +SKIP
        """
        preset_dir = pathlib.Path(preset_dir)
        if card is not None:
            self.metadata["card"] = _jsonable(card)
        path = self.export(preset_dir / str(version), force=True)
        if weights_dtype is not None:
            saving.store_weights_as(path / saving.EXPORT_MODEL, weights_dtype)
        write_json(preset_dir / saving.CARD_FILE,
                   {"name": preset_dir.name, **self.card,
                    "size_bytes": saving.folder_bytes(preset_dir / str(version)),
                    "weights_dtype": weights_dtype or "float32"})
        return preset_dir

    # -- use -----------------------------------------------------------------------
    def predict(self, x, sample_rate=None, batch_size=512, verbose=0, **kwargs):
        """Predictions in physical units: ``{target, target_lower, target_upper}``
        (bounds when the task is calibrated), plus ``time`` for records and raw AE.

        ``x`` is a dataset name or record path (every full window of the record), a
        ``data.Record``, raw AE samples ``(n, n_channels)`` with ``sample_rate`` (Hz),
        or feature windows ``(n, input_len, n_features)`` of raw log-variance.

        Example:
            >>> out = task.predict("p4581")                       # doctest: +SKIP
            >>> out["time"].shape == out["shear_stress"].shape     # doctest: +SKIP
            True
        """
        if isinstance(x, (str, os.PathLike, Record)):
            record = self.read_record(x) if not isinstance(x, Record) else x
            check_feature_names(self.preprocessor.feature_names, record.feature_names,
                                "the model", f"record {record.name!r}")
            return self._predict_series(record.features, record.time, batch_size)
        x = np.asarray(x)
        if sample_rate is not None:
            return self.streamer(sample_rate=sample_rate, engine="windowed").update(x).as_dict()
        if x.ndim != 3 or x.shape[1:] != (self.preprocessor.input_len,
                                          len(self.preprocessor.feature_names)):
            raise ValueError(f"feature windows of shape {x.shape}; the model takes (n, "
                             f"{self.preprocessor.input_len}, {len(self.preprocessor.feature_names)})"
                             f" of {self.preprocessor.feature_names}, or a record, or raw AE "
                             "with sample_rate=")
        return self._named(predict_windows(self.network, self.preprocessor, x,
                                             self.intervals, batch_size))

    def read_record(self, name_or_path, **options):
        """A record read with the model's channels and feature kind.

        Example:
            >>> record = task.read_record("p4581")                 # doctest: +SKIP
            >>> task.predict(record)["time"][0]                     # doctest: +SKIP
        """
        return load_record(name_or_path, channels=channels_of(self.preprocessor.feature_names),
                           features=self.preprocessor.feature_kind, **options)

    def evaluate(self, data=None, split="test", ratios=None, plots_dir=None,
                 return_predictions=False, **kwargs):
        """Metrics in physical units on every labelled step of a split.

        ``data``: None (the record the task was trained on, prepared again as it was,
        sha256-checked), a dataset name or record path (prepared with the task's
        window, channels and processing; split 5:1:4 unless ``ratios``), or a
        prepared data dir. The interval is scored on the task's own data only.

        Example:
            >>> task.evaluate("p4581")["targets"]["shear_stress"]["rmse"]  # doctest: +SKIP
            0.05...
        """
        with self.scoring_data(data, ratios) as (data_dir, described, own):
            result, p = evaluate_model(self, data_dir, split, plots_dir,
                                       title=f"{described}/{split}", intervals=own)
            result.update(dataset=str(described), data_dir=str(data_dir))
        return (result, p) if return_predictions else result

    def plot(self, data=None, split="test", path=None):
        """Prediction, interval band and truth over a split, one panel per target:
        ``path`` (default ``plots/{split}_{target}.png``); returns the files written.

        Example:
            >>> task.plot("p4581", split="test", path="plots")    # doctest: +SKIP
        """
        out = pathlib.Path(path or "plots")
        out.mkdir(parents=True, exist_ok=True)
        self.evaluate(data, split, plots_dir=out)
        return [out / f"{split}_{t}.png" for t in self.target_names]

    def export(self, version_dir, force=False):
        """The TF Serving SavedModel of this task in ``version_dir`` (``NAME/VERSION``),
        with the preprocessing and interval in its graph.

        Example:
            >>> task.export("saved_models/p4581/1")               # doctest: +SKIP
        """
        return export_task(self, version_dir, force=force)

    def streamer(self, **kwargs):
        """A ``streaming.Streamer`` on this task (raw AE or log-variance steps in,
        predictions out, state kept between chunks).

        Example:
            >>> s = task.streamer(sample_rate=2e6)                 # doctest: +SKIP
            >>> rows = list(s.update(chunk).rows())                # doctest: +SKIP
        """
        return Streamer(self, **kwargs)

    def fit(self, *args, **kwargs):
        raise NotImplementedError("a LabquakeRegressor is trained through labquake_tf.finetune"
                                  "(task, data, ...) (or `labquake finetune`); "
                                  "task.network.fit trains the bare network")

    def summary(self, **kwargs):
        """The backbone, the heads, the preprocessor and the interval, in one print.

        Example:
            >>> task.summary()                                     # doctest: +SKIP
            LabquakeRegressor 'tcn': shear_stress
              backbone: 4 decoder block(s) of 32 filters, kernel 4
            ...
        """
        blocks = decoder_blocks(self.network)
        trainable = sum(int(np.prod(w.shape)) for w in self.network.trainable_weights)
        print(f"LabquakeRegressor {self.name!r}: {', '.join(self.target_names)}")
        print(f"  backbone: {len(blocks)} decoder block(s) of {blocks[0].filters} filters, "
              f"kernel {blocks[0].kernel_size}"
              + (", streamable" if is_streamable(self.network) else ""))
        print(f"  heads: {len(self.heads)} (parameters {self.network.count_params():,}, "
              f"trainable {trainable:,})")
        print("\n".join("  " + line for line in repr(self.preprocessor).splitlines()))
        if self.intervals:
            print(f"  interval: {self.intervals['coverage']:.0%} split-conformal, "
                  f"score {self.intervals.get('score')}")

    # -- helpers -----------------------------------------------------------------------
    @contextlib.contextmanager
    def scoring_data(self, data=None, ratios=None):
        """Yield ``(data_dir, description, own)``: prepared data to score on, and whether
        it is the task's own (its scalers and splits), where the interval applies."""
        manifest = self.metadata.get("data") or {}
        if data is not None and (pathlib.Path(data) / MANIFEST_FILE).is_file():
            theirs = read_json(pathlib.Path(data) / MANIFEST_FILE)
            own = all(theirs.get(k) == manifest.get(k) for k in ("scaler", "splits"))
            yield (pathlib.Path(data), theirs.get("request", {}).get("dataset")
                   or theirs.get("dataset") or pathlib.Path(data).name, own)
            return
        pre = self.preprocessor
        # A task without a recorded request (a PyTorch import) still says its window,
        # targets and features: enough to prepare a dataset for it.
        request = manifest.get("request") or {
            "seq_len": pre.input_len, "targets": pre.target_names,
            "feature_names": pre.feature_names, "features": pre.feature_kind}
        own = self.is_own_data(data, ratios)
        if own and not request.get("dataset"):
            raise DataError("this model records no dataset it was trained on: give one")
        with tempfile.TemporaryDirectory(prefix=".labquake-eval-") as tmp:
            data_dir = pathlib.Path(tmp) / DATA_FOLDER
            prepared = prepare.prepare_like(request, data_dir, None if own else data, ratios)
            check_feature_names(pre.feature_names, prepared["feature_names"], "the model",
                                f"{data or request['dataset']}")
            yield data_dir, data or request["dataset"], own

    def is_own_data(self, dataset=None, ratios=None):
        """Whether ``dataset`` split by ``ratios`` (None: as recorded) is the data the task
        was trained on: its record and its split, where its interval was calibrated."""
        request = (self.metadata.get("data") or {}).get("request") or {}
        own = dataset is None or prepare.dataset_key(dataset) == request.get("dataset")
        if ratios is not None:
            own = own and bool(request.get("split")) and np.allclose(ratios, request["split"])
        return own

    def _predict_series(self, features, time, batch_size):
        n = self.preprocessor.input_len
        if len(features) < n:
            raise ValueError(f"{len(features)} steps, shorter than one {n}-step window")
        ends = np.arange(n - 1, len(features))
        out = self._named(predict_windows(self.network, self.preprocessor,
                                            cut(np.asarray(features, np.float32), ends, n),
                                            self.intervals, batch_size))
        return {"time": np.asarray(time)[ends], **out}

    def _named(self, p):
        out = {}
        for i, name in enumerate(self.target_names):
            out[name] = p["pred"][:, i]
            if "lower" in p:
                out[f"{name}_lower"], out[f"{name}_upper"] = p["lower"][:, i], p["upper"][:, i]
        return out


def _jsonable(tree):
    """``tree`` as plain JSON values (numpy scalars -> numbers, paths -> strings): what
    the task's config can hold."""
    return json.loads(json.dumps(tree, default=lambda o: o.item() if hasattr(o, "item")
                                 else str(o)))
