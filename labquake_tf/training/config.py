"""The knobs of a training run, as one serialisable dataclass, and its command-line flags.

Defaults follow the reference (Wang et al. 2025): AdamW, cosine schedule with a
50-epoch period, gradient clipping, early stopping with patience 20, batch 128.
Every training command (``pretrain``, ``finetune``, ``tune``) gets its training
flags from the fields below (``add_arguments`` / ``from_args``), so they cannot drift.
"""

import dataclasses
from typing import Optional, Union

from labquake_tf.training.strategy import PRECISIONS, STRATEGIES

JIT_CHOICES = ("auto", "on", "off")


def _field(default, help, **cli):
    return dataclasses.field(default=default, metadata={"help": help, **cli})


@dataclasses.dataclass
class TrainConfig:
    epochs: int = _field(100, "epochs to train (at most, with early stopping)")
    batch_size: int = _field(128, "GLOBAL batch: per-replica batch x number of replicas")
    learning_rate: float = _field(1e-3, "peak learning rate of the cosine schedule")
    weight_decay: float = _field(1e-4, "AdamW weight decay")
    clipnorm: Optional[float] = _field(
        1.0, "clip the global norm of the gradient summed over replicas (as "
        "torch.nn.utils.clip_grad_norm_); 0 turns clipping off")
    cosine_period: int = _field(50, "epochs per cosine cycle; the learning rate restarts after each")
    patience: int = _field(20, "early stopping: epochs without a better validation loss")
    precision: str = _field("auto", "Keras dtype policy (auto: mixed_float16 on GPU, "
                            "float32 on CPU)", choices=PRECISIONS)
    strategy: str = _field("auto", "tf.distribute strategy (auto: multiworker with TF_CONFIG, "
                           "mirrored over 2+ GPUs, else default)", choices=STRATEGIES)
    seed: int = _field(0, "seed of weights, dropout and shuffling")
    jit_compile: Union[str, bool] = _field(
        "auto", "XLA-compile the training step (auto: where measured faster, see "
        "trainer.choose_jit_compile)", choices=JIT_CHOICES)
    steps_per_epoch: Optional[int] = _field(
        None, "cap each epoch at this many batches (default: one pass over the training "
        "split)", aliases=("--max-steps",))
    verbose: int = _field(1, "Keras progress output: 0 silent, 1 progress bar, 2 one line per "
                          "epoch", flag="--progress", choices=(0, 1, 2), type=int)

    def __post_init__(self):
        for name in ("epochs", "batch_size", "cosine_period", "patience"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)!r}")
        if self.learning_rate <= 0:
            raise ValueError(f"TrainConfig.learning_rate must be > 0, got {self.learning_rate!r}")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise ValueError(f"TrainConfig.steps_per_epoch must be >= 1, got {self.steps_per_epoch!r}")
        # Names are checked here, not only by argparse: configs also come from JSON.
        for name, choices in (("precision", PRECISIONS), ("strategy", STRATEGIES)):
            if getattr(self, name) not in choices:
                raise ValueError(f"TrainConfig.{name} must be one of {choices}, "
                                 f"got {getattr(self, name)!r}")
        if self.jit_compile in ("on", "off"):
            self.jit_compile = self.jit_compile == "on"
        if self.jit_compile not in (True, False, "auto"):
            raise ValueError(f"TrainConfig.jit_compile must be one of {JIT_CHOICES} or a bool, "
                             f"got {self.jit_compile!r}")
        if not self.clipnorm:
            self.clipnorm = None

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d):
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"TrainConfig: unknown field(s) {unknown}; known: {sorted(known)}")
        return cls(**d)


def add_arguments(parser, skip=(), **defaults):
    """Add one ``--flag`` per TrainConfig field (``batch_size`` -> ``--batch-size``) to
    ``parser``, in an argument group; ``defaults`` override the dataclass's per command."""
    group = parser.add_argument_group("training")
    for field in dataclasses.fields(TrainConfig):
        if field.name in skip:
            continue
        meta = field.metadata
        default = defaults.get(field.name, field.default)
        # --progress, not --verbose: the CLI's --verbose is about logs and tracebacks.
        flags = [meta.get("flag", f"--{field.name.replace('_', '-')}"), *meta.get("aliases", ())]
        shown = "" if default is None else f" (default: {default})"
        kwargs = dict(dest=field.name, default=default, help=meta["help"] + shown)
        if "choices" in meta:
            kwargs["choices"] = meta["choices"]
        if "choices" not in meta or "type" in meta:
            kwargs["type"] = meta.get("type") or _scalar_type(field.type)
        group.add_argument(*flags, **kwargs)
    return group


def from_args(args, **overrides):
    """The TrainConfig of parsed ``args`` (fields ``add_arguments`` added), with overrides."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
              if hasattr(args, f.name)}
    return TrainConfig(**{**values, **overrides})


def _scalar_type(annotation):
    for kind in (int, float, str):
        if annotation is kind or kind in getattr(annotation, "__args__", ()):
            return kind
    raise TypeError(f"no command-line type for {annotation!r}")


__all__ = ["TrainConfig", "add_arguments", "from_args"]
