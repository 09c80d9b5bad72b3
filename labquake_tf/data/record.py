"""The in-memory form every reader produces and every later step consumes."""

import dataclasses
from typing import Dict, List, Optional

import numpy as np

from labquake_tf.errors import DataError


@dataclasses.dataclass
class Record:
    """One experiment on a uniform time grid, features and targets aligned step by step.

    ``time[i]`` is the END of the AE window behind ``features[i]``: a model that
    sees steps ``<= i`` never sees AE recorded after ``time[i]`` (no look-ahead).
    ``label_mask[name][i]`` is False where target ``name`` is not a real label at
    step ``i``: each target has its own mask. Shear stress is a label wherever it
    was measured; time to failure is not after the last event (the DDS files
    count down to a non-existent one there) nor before the first event can be
    paired. A single boolean array is accepted and applies to every target.
    ``events`` holds ``[onset, end]`` step indices of stick-slip failures
    (onset = stress peak before the drop, end = minimum after it).
    """

    name: str
    time: np.ndarray
    features: np.ndarray
    feature_names: List[str]
    targets: Dict[str, np.ndarray]
    label_mask: Dict[str, np.ndarray]
    events: Optional[np.ndarray] = None
    source: str = ""
    sha256: str = ""
    attrs: Dict = dataclasses.field(default_factory=dict)
    """How the record was made (filter, detrend, TTF source, ...), copied into the manifest."""

    def __post_init__(self):
        n = len(self.time)
        if self.features.ndim != 2 or self.features.shape[0] != n:
            raise ValueError(
                f"{self.name}: features must be (n_steps, n_features) with n_steps={n}, "
                f"got {self.features.shape}")
        if len(self.feature_names) != self.features.shape[1]:
            raise ValueError(f"{self.name}: {len(self.feature_names)} feature names for "
                             f"{self.features.shape[1]} feature columns")
        for key, value in self.targets.items():
            if len(value) != n:
                raise ValueError(f"{self.name}: target {key!r} has {len(value)} steps, expected {n}")
        if not isinstance(self.label_mask, dict):
            self.label_mask = {key: np.asarray(self.label_mask, bool) for key in self.targets}
        missing = [key for key in self.targets if key not in self.label_mask]
        if missing:
            raise ValueError(f"{self.name}: no label_mask for target(s) {missing}")
        for key, mask in self.label_mask.items():
            if len(mask) != n:
                raise ValueError(f"{self.name}: label_mask[{key!r}] has {len(mask)} steps, "
                                 f"expected {n}")

    @property
    def dt(self) -> float:
        """Step in seconds (the records are uniform)."""
        return float(np.median(np.diff(self.time))) if len(self.time) > 1 else float("nan")

    def __len__(self):
        return len(self.time)


def check_feature_names(expected, got, expected_from="the model", got_from="the data"):
    """Features are matched by name, never by count: a model trained on ``logvar_ch2``
    must not be fed channel 1. Raises ``ValueError`` naming both lists."""
    expected, got = list(expected), list(got)
    if expected != got:
        raise DataError(f"feature names differ: {expected_from} takes {expected}, "
                         f"{got_from} has {got}")


def channels_of(feature_names):
    """The 1-based AE channels behind feature names like ``logvar_ch2`` (None if unnamed)."""
    channels = []
    for name in feature_names:
        head, sep, number = str(name).rpartition("_ch")
        if not sep or not number.isdigit():
            return None
        channels.append(int(number))
    return channels
