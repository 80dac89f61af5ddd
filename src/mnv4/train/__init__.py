"""Training MobileNetV4: the paper's recipes, DDP through torchrun, exact resume, distillation.

Library use::

    from mnv4.train import load_config, train
    result = train(load_config("mobilenetv4_conv_small", data="/data/imagenet", batch_size=256))

Command line: ``mnv4 train ...``, ``python -m mnv4.train ...`` or ``torchrun --nproc-per-node N -m mnv4.train ...``.
"""

from .config import TrainConfig, list_recipes, load_config, load_recipe
from .distill import kd_loss, load_teacher, precompute_soft_labels
from .loop import NonFiniteLossError, TrainResult, build_model, evaluate, train

__all__ = [
    "NonFiniteLossError",
    "TrainConfig",
    "TrainResult",
    "build_model",
    "evaluate",
    "kd_loss",
    "list_recipes",
    "load_config",
    "load_recipe",
    "load_teacher",
    "precompute_soft_labels",
    "train",
]
