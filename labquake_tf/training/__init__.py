"""Training: strategy and precision, the training loop and its resume, the fine-tune
model (``finetune``) and its ensemble of heads (``ensemble``, ``select``).

``train(build_fn, train_ds, val_ds, TrainConfig(...), out_dir)`` is the whole
API most callers need. The pretraining and fine-tuning jobs themselves are in
``labquake_tf.jobs``; ``LabquakeRegressor.from_preset`` reads back what they left.
"""

from labquake_tf.training.config import TrainConfig
from labquake_tf.training.strategy import get_strategy, set_precision
from labquake_tf.training.trainer import compile_model, make_optimizer, train

__all__ = ["TrainConfig", "compile_model", "get_strategy", "make_optimizer", "set_precision", "train"]
