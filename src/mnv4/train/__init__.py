"""Training MobileNetV4: the paper's recipes, small-data defaults, DDP through torchrun, exact resume, distillation.

Library use::

    from mnv4.train import load_config, train
    result = train(load_config("mobilenetv4_conv_small", data="/data/imagenet", batch_size=256))

Command line: ``mnv4 train ...``, ``python -m mnv4.train ...`` or ``torchrun --nproc-per-node N -m mnv4.train ...``.

Classification is a task on the shared run machinery (``mnv4.engine``: the step loop, checkpoints, resume, the NaN
guard, logs, optimiser groups and schedule, the process group). Modules here: ``config`` (TrainConfig, recipes),
``plan`` (small-data and device defaults), ``inputs`` (data sets, loaders, the validation protocol), ``data`` (the
input pipelines), ``validation`` (evaluate), ``distill``, ``dali``, and ``loop`` (``train``, ``ClassificationTask``).
"""

from ..engine import (
    MetricLog,
    NonFiniteError,
    NonFiniteLossError,
    RunPlan,
    RunState,
    WarmupCosine,
    atomic_save,
    checkpoint_to_resume,
    list_checkpoints,
    load_checkpoint,
    param_groups,
    prune_checkpoints,
)
from .config import TrainConfig, list_recipes, load_config, load_recipe
from .distill import kd_loss, load_teacher, precompute_soft_labels
from .loop import ClassificationTask, TrainResult, build_model, train
from .plan import fit_to_data, fit_to_device
from .validation import evaluate

TrainState = RunState  # the name of earlier versions

__all__ = [
    "ClassificationTask",
    "MetricLog",
    "NonFiniteError",
    "NonFiniteLossError",
    "RunPlan",
    "RunState",
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
