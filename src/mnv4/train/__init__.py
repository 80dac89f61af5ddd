"""Training MobileNetV4: the paper's recipes, small-data defaults, DDP through torchrun, exact resume, distillation.

Library use::

    from mnv4.train import load_config, train
    result = train(load_config("mobilenetv4_conv_small", data="/data/imagenet", batch_size=256))

Command line: ``mnv4 train ...``, ``python -m mnv4.train ...`` or ``torchrun --nproc-per-node N -m mnv4.train ...``.

Modules: ``config`` (TrainConfig, recipes), ``plan`` (step arithmetic, small-data fitting), ``inputs`` (data sets,
loaders, the validation protocol), ``data`` (the input pipelines), ``optim`` (AdamW groups, WarmupCosine, the
optimiser step), ``guard`` (the NaN/inf stop), ``state`` (TrainState: what a checkpoint holds), ``checkpoint``
(atomic writes, listing, loading), ``resume`` (restoring a run, best.pt repair), ``metrics`` (MetricLog),
``validation`` (evaluate), ``distill``, ``distributed``, and ``loop`` (train).
"""

from .checkpoint import atomic_save, checkpoint_to_resume, list_checkpoints, load_checkpoint, prune_checkpoints
from .config import TrainConfig, list_recipes, load_config, load_recipe
from .distill import kd_loss, load_teacher, precompute_soft_labels
from .guard import NonFiniteError, NonFiniteLossError
from .loop import TrainResult, build_model, train
from .metrics import MetricLog
from .optim import WarmupCosine, param_groups
from .plan import RunPlan, fit_to_data, fit_to_device
from .state import TrainState
from .validation import evaluate

__all__ = [
    "MetricLog",
    "NonFiniteError",
    "NonFiniteLossError",
    "RunPlan",
    "TrainConfig",
    "TrainResult",
    "TrainState",
    "WarmupCosine",
    "atomic_save",
    "build_model",
    "checkpoint_to_resume",
    "evaluate",
    "fit_to_data",
    "fit_to_device",
    "kd_loss",
    "list_checkpoints",
    "list_recipes",
    "load_checkpoint",
    "load_config",
    "load_recipe",
    "load_teacher",
    "param_groups",
    "precompute_soft_labels",
    "prune_checkpoints",
    "train",
]
