"""The task: one Keras object that carries its preprocessing, heads and interval
(``LabquakeRegressor``), and the pretrained presets that ship with the package.

It sits above every layer it composes (data, models, evaluation, serving,
streaming); the jobs and the CLI go through it.
"""

from labquake_tf.models import saving
from labquake_tf.task.regressor import LabquakeRegressor


def presets():
    """The shipped pretrained presets, one line each: name, record, target, size,
    test RMSE (``labquake presets`` prints the same).

    Example:
        >>> import labquake_tf as lq
        >>> print(lq.presets())                                   # doctest: +SKIP
        p4581-shear-stress  p4581 shear_stress  ...  test RMSE 0.05 MPa
    """
    return Presets(saving.shipped_names())


class Presets(list):
    """A list of preset names that prints as a table of their model cards."""

    def __repr__(self):
        return "\n".join(describe(name) for name in self) or "no presets installed"

    __str__ = __repr__


def describe(name):
    """One line of a shipped preset's card."""
    card = saving.shipped_card(name)
    metrics = card.get("test_metrics", {})
    scores = ", ".join(f"{t} RMSE {m['rmse']:.3g} {m.get('units', '')}".rstrip()
                       + (f", {m['coverage']:.0%} in its interval" if "coverage" in m else "")
                       for t, m in metrics.items())
    return (f"{name:<22} {card.get('dataset', '?'):<18} {','.join(card.get('targets', [])):<13} "
            f"{card.get('size_bytes', 0) / 1e6:5.1f} MB  test: {scores or 'n/a'}")


__all__ = ["LabquakeRegressor", "presets", "describe"]
