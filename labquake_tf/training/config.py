"""The knobs of a training run, as one serialisable dataclass.

Defaults follow the reference (Wang et al. 2025): AdamW, cosine schedule with a
50-epoch period, gradient clipping, early stopping with patience 20, batch 128.
"""

import dataclasses
from typing import Optional


@dataclasses.dataclass
class TrainConfig:
    epochs: int = 100
    batch_size: int = 128
    """GLOBAL batch: per-replica batch x number of replicas."""
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    clipnorm: Optional[float] = 1.0
    """Clip the global gradient norm (as ``torch.nn.utils.clip_grad_norm_``)."""
    cosine_period: int = 50
    """Epochs per cosine cycle; the learning rate restarts after each."""
    patience: int = 20
    precision: str = "auto"
    strategy: str = "auto"
    seed: int = 0
    jit_compile: bool = False
    steps_per_epoch: Optional[int] = None
    verbose: int = 1

    def __post_init__(self):
        for name in ("epochs", "batch_size", "cosine_period", "patience"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)!r}")
        if self.learning_rate <= 0:
            raise ValueError(f"TrainConfig.learning_rate must be > 0, got {self.learning_rate!r}")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise ValueError(f"TrainConfig.steps_per_epoch must be >= 1, got {self.steps_per_epoch!r}")

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d):
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"TrainConfig: unknown field(s) {unknown}; known: {sorted(known)}")
        return cls(**d)
