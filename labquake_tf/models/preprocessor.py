"""``Preprocessor``: what turns a record into model inputs and model outputs into
physical units, saved with the model.

It holds the feature kind and names (features are matched by name, never by
position), the window the network reads (``seq_len`` plus a streamable decoder's
history: ``input_len``), the step ``dt``, the feature scaler and one scaler and
unit per target. The scalers were fitted on the training part of the data the
model was trained on, and are applied through ``data.scaling.MinMaxScaler`` alone
(``scale_features``, ``unscale_targets``).

A model imported from PyTorch has no scaler until it is fine-tuned or given one
(``fitted`` is False); evaluation then scores it with the data's own.
"""

import keras
import numpy as np

from labquake_tf import TARGET_UNITS
from labquake_tf.data.features import check_kind, manifest_kind
from labquake_tf.data.scaling import MinMaxScaler


@keras.saving.register_keras_serializable(package="labquake_tf")
class Preprocessor:
    """Feature kind and names, window, scalers and units of one model.

    Example:
        >>> pre = Preprocessor(["logvar_ch1"], ["shear_stress"], seq_len=64, dt=0.01,
        ...                    feature_scaler={"min": [-2.0], "max": [2.0]},
        ...                    target_scaler={"min": [1.0], "max": [3.0]})
        >>> pre.scale_features([[0.0]]).tolist(), pre.unscale_targets([[0.5]]).tolist()
        ([[0.5]], [[2.0]])
    """

    def __init__(self, feature_names, target_names, seq_len, input_len=None, dt=None,
                 feature_kind=None, feature_scaler=None, target_scaler=None, units=None):
        self.feature_names = [str(n) for n in feature_names]
        self.target_names = [str(n) for n in target_names]
        self.seq_len = int(seq_len)
        self.input_len = int(input_len or seq_len)
        if self.input_len < self.seq_len:  # a manifest of longer windows than the network reads
            raise ValueError(f"windows of seq_len={self.seq_len} steps, but the network reads "
                             f"input_len={self.input_len}: that is seq_len plus a streamable "
                             "decoder's history, never less")
        self.dt = None if dt is None else float(dt)
        self.feature_kind = check_kind(feature_kind or manifest_kind(
            {"feature_names": self.feature_names}))
        self.feature_scaler = _scaler(feature_scaler, self.feature_names)
        self.target_scaler = _scaler(target_scaler, self.target_names)
        units = dict(units or {})
        self.units = {t: units.get(t, TARGET_UNITS.get(t, "")) for t in self.target_names}

    @classmethod
    def from_manifest(cls, manifest, input_len=None):
        """The preprocessor of a model trained on a prepared data dir's ``manifest``
        (or a run's, which is that manifest), reading ``input_len`` steps.

        Example:
            >>> pre = Preprocessor.from_manifest(load_manifest("runs/data/p4581"))  # doctest: +SKIP
        """
        scaler = manifest.get("scaler") or {}
        targets = list(manifest["target_names"])
        target_scaler = scaler.get("targets")
        if target_scaler is not None:
            target_scaler = MinMaxScaler.from_dict(target_scaler)
            if target_scaler.names and list(target_scaler.names) != targets:
                target_scaler = target_scaler.select(targets)
        units = manifest.get("units") or {}
        if not isinstance(units, dict):  # a list aligned with target_names
            units = dict(zip(targets, units))
        return cls(manifest["feature_names"], targets, seq_len=manifest["seq_len"],
                   input_len=input_len, dt=manifest.get("dt"),
                   feature_kind=manifest_kind(manifest), feature_scaler=scaler.get("features"),
                   target_scaler=target_scaler, units=units)

    @property
    def fitted(self):
        """True when both scalers are there (a PyTorch import has none).

        Example:
            >>> Preprocessor(["std_ch1"], ["shear_stress"], seq_len=8).fitted
            False
        """
        return self.feature_scaler is not None and self.target_scaler is not None

    def scale_features(self, x):
        """Raw features (numpy or a tensor, ``(..., n_features)``) -> model inputs.

        Example:
            >>> task.preprocessor.scale_features(windows).dtype    # doctest: +SKIP
            dtype('float32')
        """
        return self._need(self.feature_scaler, "feature").transform(x)

    def unscale_targets(self, y):
        """Model outputs ``(..., n_targets)`` -> physical units (MPa, s).

        Example:
            >>> task.preprocessor.unscale_targets([[0.5]])         # doctest: +SKIP
        """
        return self._need(self.target_scaler, "target").inverse_transform(y)

    def scale_targets(self, y):
        """Physical targets -> the model's scaled outputs (``unscale_targets``' inverse).

        Example:
            >>> task.preprocessor.scale_targets([[3.0]])           # doctest: +SKIP
        """
        return self._need(self.target_scaler, "target").transform(y)

    @property
    def target_scale(self):
        """Physical units per scaled unit, per target (a spread's conversion).

        Example:
            >>> task.preprocessor.target_scale                     # doctest: +SKIP
            array([0.175])
        """
        return self._need(self.target_scaler, "target").scale

    def with_scalers(self, feature_scaler, target_scaler):
        """A copy with other scalers (``MinMaxScaler`` or their dicts).

        Example:
            >>> pre.with_scalers(data_features, data_targets).fitted  # doctest: +SKIP
            True
        """
        return Preprocessor.from_config({**self.get_config(),
                                         "feature_scaler": _as_dict(feature_scaler),
                                         "target_scaler": _as_dict(target_scaler)})

    def get_config(self):
        return {"feature_names": self.feature_names, "target_names": self.target_names,
                "seq_len": self.seq_len, "input_len": self.input_len, "dt": self.dt,
                "feature_kind": self.feature_kind,
                "feature_scaler": _as_dict(self.feature_scaler),
                "target_scaler": _as_dict(self.target_scaler), "units": self.units}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __eq__(self, other):
        return isinstance(other, Preprocessor) and self.get_config() == other.get_config()

    def __repr__(self):
        lines = [f"Preprocessor: {self.feature_kind} features {self.feature_names} -> "
                 f"{', '.join(f'{t} ({u})' for t, u in self.units.items())}",
                 f"  window: {self.seq_len} steps of "
                 + (f"{self.dt:g} s" if self.dt is not None else "unknown length (no dt)")
                 + (f" (+{self.input_len - self.seq_len} steps of decoder history)"
                    if self.input_len > self.seq_len else "")]
        for side, scaler in (("features", self.feature_scaler), ("targets", self.target_scaler)):
            lines.append(f"  {side} scaler: " + (
                "none (fitted on the data's training part when scored)" if scaler is None else
                ", ".join(f"{n} [{lo:.4g}, {hi:.4g}]" for n, lo, hi in
                          zip(scaler.names, scaler.data_min, scaler.data_max))))
        return "\n".join(lines)

    def _need(self, scaler, side):
        if scaler is None:
            raise ValueError(f"this model has no {side} scaler (a PyTorch import): fine-tune "
                             "it, or import it with --scaler-from DATA_DIR")
        return scaler


def _scaler(value, names):
    if value is None:
        return None
    scaler = value if isinstance(value, MinMaxScaler) else MinMaxScaler.from_dict(value)
    if scaler.names and list(scaler.names) != list(names):  # columns are matched by name
        raise ValueError(f"scaler fitted on columns {scaler.names}, given for {names}")
    if np.shape(scaler.data_min) != (len(names),):
        raise ValueError(f"scaler of {np.shape(scaler.data_min)} values for columns {names}")
    return MinMaxScaler(scaler.data_min, scaler.data_max, names)


def _as_dict(scaler):
    if scaler is None or isinstance(scaler, dict):
        return scaler
    return scaler.to_dict()
