"""The search space: a small JSON file mapping each hyper-parameter to a spec.

A spec is either a plain value (kept fixed, e.g. ``"filters": 32``), ``{"choice":
[...]}``, or a range ``{"min", "max", "step"?, "sampling"?}`` (integers when both
ends are integers). Names missing from the file take the packaged defaults.
"""

import json
import pathlib

DEFAULT_SPACE = pathlib.Path(__file__).with_name("search_space.json")

ARCHITECTURE = ("blocks", "filters", "kernel_size")
"""Fixed by the pretrained decoder when only the head is tuned."""

HYPERPARAMETERS = ARCHITECTURE + (
    "dropout", "seq_len", "learning_rate", "weight_decay", "clipnorm", "batch_size")


def load_space(path=None):
    """The packaged defaults overlaid with the specs in ``path`` (if given)."""
    space = _read(DEFAULT_SPACE)
    if path is not None:
        space.update(_read(path))
    return space


def declare(hp, name, spec):
    """Declares ``name`` on ``hp`` from its spec and returns the value for this trial."""
    if not isinstance(spec, dict):
        return hp.Fixed(name, spec)
    if "choice" in spec:
        return hp.Choice(name, spec["choice"])
    lo, hi = spec["min"], spec["max"]
    sampling = spec.get("sampling", "linear")
    if isinstance(lo, int) and isinstance(hi, int):
        return hp.Int(name, lo, hi, step=spec.get("step", 1), sampling=sampling)
    return hp.Float(name, float(lo), float(hi), step=spec.get("step"), sampling=sampling)


def values(spec):
    """Every value a spec can take, or its ends for a continuous range."""
    if not isinstance(spec, dict):
        return [spec]
    if "choice" in spec:
        return list(spec["choice"])
    return [spec["min"], spec["max"]]


def _read(path):
    try:
        space = json.loads(pathlib.Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"search space {path}: cannot read it as JSON ({err})") from err
    if not isinstance(space, dict):
        raise ValueError(f"search space {path}: expected an object of name -> spec")
    for name, spec in space.items():
        if name not in HYPERPARAMETERS:
            raise ValueError(f"search space {path}: unknown hyper-parameter {name!r}; "
                             f"expected one of {', '.join(HYPERPARAMETERS)}")
        _check(path, name, spec)
    return space


def _check(path, name, spec):
    if not isinstance(spec, dict):
        if isinstance(spec, (list, type(None))):
            raise ValueError(f"search space {path}: {name}: use {{\"choice\": [...]}} "
                             f"for a list of values, got {spec!r}")
        return
    if "choice" in spec:
        if not isinstance(spec["choice"], list) or not spec["choice"]:
            raise ValueError(f"search space {path}: {name}.choice must be a non-empty list")
        return
    missing = {"min", "max"} - set(spec)
    if missing:
        raise ValueError(f"search space {path}: {name} needs 'choice' or 'min' and 'max' "
                         f"(missing {', '.join(sorted(missing))})")
    if spec["min"] > spec["max"]:
        raise ValueError(f"search space {path}: {name}.min > {name}.max")
