"""``TrainConfig``: every setting of a training run, and the recipe files (TOML) that fill it.

A recipe (``src/mnv4/recipes/<name>.toml``) is a flat table of ``TrainConfig`` fields. ``load_config`` layers:
dataclass defaults < recipe < explicit overrides (the CLI flags), so a recipe reproduces the paper and a flag changes
one thing. Values and their sources are documented in the recipe files (paper App. C Tab. 10 vs the official TF Model
Garden configs).

Without a recipe the defaults are for the common small-data case: fields left at ``None`` are fitted to the data set
and the model when the run starts (``mnv4.train.plan``: a global batch that gives enough optimiser steps per epoch, a
warm-up; the model's own evaluation protocol for validation) and the choices are printed in the run's first lines.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

from ..errors import UserError
from ..recipe_files import layered_values, read_recipe, recipe_folder, shipped_recipes
from ..specs import MIN_INPUT_SIZE
from ..transforms import INTERPOLATIONS

PRECISIONS = ("fp32", "bf16", "fp16")
PIPELINES = ("cpu", "gpu", "dali")
DROP_PATH_SCHEDULES = ("linear", "flat")


@dataclass
class TrainConfig:
    """One training run. Batch sizes: ``global_batch`` is the optimiser batch (the recipe's); ``batch_size`` is what
    one process pushes through the model at once; the difference is made up by gradient accumulation.

    ``None`` means "fitted when the run starts" (see ``mnv4.train.plan`` and ``mnv4.train.inputs``); a run stores the
    resolved values in its checkpoints."""

    # what and where
    model: str = "mobilenetv4_conv_small"
    data: str = ""  # ImageFolder root with train/ and val/ sub-folders
    out: str = "runs/train"
    recipe: str = ""  # name of the recipe the values came from (informational, stored in checkpoints)
    pretrained: str | bool = False  # True (the default tag) or a weights file; the classifier is re-made for the data
    attn_impl: str = "sdpa"

    # schedule and batch
    epochs: float = 10
    global_batch: int | None = None  # None: fitted to the data set (up to 256, >= 30 steps per epoch)
    batch_size: int | None = None  # per process and per micro-step; None = global_batch / world size
    max_steps: int | None = None  # stop after this many optimiser steps (for smoke runs); None = epochs

    # optimiser: AdamW without weight decay on BN, biases and layer-scale gammas
    lr: float = 2e-3
    min_lr_fraction: float = 0.0  # cosine decay "alpha": the final LR as a fraction of the peak
    warmup_epochs: float | None = None  # None: min(1, epochs / 10)
    weight_decay: float = 0.05
    beta1: float = 0.9
    beta2: float = 0.999
    adam_eps: float = 1e-8
    l2: float = 0.0  # extra coupled L2 (loss += l2/2 * |w|^2 on decayed weights), TF's ``l2_weight_decay``
    grad_clip: float | None = 1.0  # max global gradient norm; None or 0: no clipping (the paper's recipes)
    backbone_lr_scale: float = 1.0  # fine-tuning: LR multiplier for everything but the classifier

    # loss and regularisation
    label_smoothing: float = 0.1
    dropout: float = 0.0
    drop_path: float = 0.0
    drop_path_schedule: str = "linear"  # 'linear' in block index (timm / TF non-flat) or 'flat' (same everywhere)
    bn_momentum: float | None = None  # PyTorch convention (= 1 - Keras momentum); None keeps the model's 0.1
    bn_eps: float | None = None  # None keeps the model's 1e-5
    ema_decay: float | None = None  # None/0: no EMA
    ema_start_epochs: float = 0.0  # the EMA starts (as a copy of the model) after this many epochs

    # augmentation
    image_size: int | None = None  # None: the model's native resolution
    # Inception crop area range (crop_scale_min, 1). Default: 0.35 (the finetune recipe's) for the short runs on small
    # data sets the defaults are for; the paper recipes set Inception's 0.08, made for hundreds of ImageNet epochs
    crop_scale_min: float = 0.35
    # validation follows the model's evaluation protocol (``mnv4.data_config(model)``: the one ``mnv4 eval`` uses)
    # unless these are set: resize to image_size / val_crop_pct with val_interpolation, centre-crop image_size
    val_crop_pct: float | None = None
    val_interpolation: str | None = None
    hflip: bool = True
    randaug_layers: int = 0
    randaug_magnitude: float = 9.0  # TF scale 0..10 (see data.py for the mapping to torchvision)
    randaug_prob: float = 1.0  # probability to apply each of the randaug_layers ops (TF ``prob_to_apply``)
    mixup_prob: float = 0.0  # probability that a batch is mixed at all
    mixup_alpha: float = 0.8
    cutmix_alpha: float = 1.0
    mixup_switch_prob: float = 0.5  # probability of CutMix instead of Mixup for a mixed batch
    mean: tuple[float, float, float] | None = None  # None: the model's (``data_config(model).mean``)
    std: tuple[float, float, float] | None = None

    # distillation
    teacher: str | None = None  # model name (pretrained), or a weights file (.safetensors / our .pt checkpoint)
    teacher_model: str | None = None  # architecture of a teacher file without metadata
    kd_temperature: float = 1.0
    kd_alpha: float = 1.0  # weight of the KD term; (1 - kd_alpha) * CE(labels) is added
    soft_labels: str | None = None  # offline distillation: a file from ``precompute_soft_labels``

    # quantization-aware training (mnv4.export.qat): fine-tune ``pretrained`` fp32 weights with fake-quant, then
    # write int8 ExecuTorch (.pte) and ONNX QDQ files next to the checkpoints
    qat: bool = False

    # engine
    device: str = "auto"  # 'auto' = cuda if available else cpu
    # None: fitted to the device when the run starts (``mnv4.train.plan.fit_to_device``): on CUDA bf16 autocast,
    # channels_last and torch.compile (the throughput settings); on the CPU fp32, NCHW, eager
    precision: str | None = None
    channels_last: bool | None = None
    compile: bool | None = None
    sync_bn: bool = False
    data_pipeline: str = "cpu"  # 'gpu': torchvision nvJPEG + GPU crops; 'dali': mnv4.train.dali
    dali_threads: int = 4  # data_pipeline='dali': DALI's own CPU threads (decode / Huffman), per process
    workers: int = 4
    seed: int = 0
    deterministic: bool = False  # torch.use_deterministic_algorithms(True) (bit-exact CPU runs)
    threads: int | None = None  # torch.set_num_threads

    # checkpoints and logs
    resume: str | None = None  # a checkpoint file, or 'auto' for the newest in ``out``
    save_every_steps: int = 0  # 0: once per epoch
    keep_last: int = 3
    log_every: int = 20
    progress: bool = True
    tensorboard: bool = True

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        def check(ok: bool, msg: str) -> None:
            if not ok:
                raise UserError(msg)

        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            check(_has_type(value, f.type), f"{f.name} must be {f.type}, got {value!r}")
        check(self.precision in (None, *PRECISIONS), f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        check(
            re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device) is not None,
            f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}",
        )
        check(self.data_pipeline in PIPELINES, f"data_pipeline must be one of {PIPELINES}, got {self.data_pipeline!r}")
        check(
            self.drop_path_schedule in DROP_PATH_SCHEDULES,
            f"drop_path_schedule must be one of {DROP_PATH_SCHEDULES}, got {self.drop_path_schedule!r}",
        )
        check(self.epochs > 0, f"epochs must be > 0, got {self.epochs}")
        check(
            self.global_batch is None or self.global_batch >= 1, f"global_batch must be >= 1, got {self.global_batch}"
        )
        check(self.batch_size is None or self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        check(self.lr > 0, f"lr must be > 0, got {self.lr}")
        check(0 <= self.min_lr_fraction <= 1, f"min_lr_fraction must be in [0, 1], got {self.min_lr_fraction}")
        check(
            self.warmup_epochs is None or self.warmup_epochs >= 0, f"warmup_epochs must be >= 0 ({self.warmup_epochs})"
        )
        check(self.grad_clip is None or self.grad_clip >= 0, f"grad_clip must be >= 0, got {self.grad_clip}")
        for name in ("dropout", "drop_path", "label_smoothing", "randaug_prob", "mixup_prob", "mixup_switch_prob"):
            value = getattr(self, name)
            check(0 <= value <= 1, f"{name} must be in [0, 1], got {value}")
        check(0 < self.crop_scale_min <= 1, f"crop_scale_min must be in (0, 1], got {self.crop_scale_min}")
        check(
            self.val_crop_pct is None or 0 < self.val_crop_pct <= 1,
            f"val_crop_pct must be in (0, 1], got {self.val_crop_pct}",
        )
        check(
            self.val_interpolation in (None, *INTERPOLATIONS),
            f"val_interpolation must be one of {INTERPOLATIONS}, got {self.val_interpolation!r}",
        )
        for name in ("mean", "std"):
            value = getattr(self, name)
            check(value is None or len(value) == 3, f"{name} needs 3 values (R, G, B), got {value}")
        check(self.std is None or min(self.std) > 0, f"std values must be > 0, got {self.std}")
        check(self.ema_decay is None or 0 <= self.ema_decay < 1, f"ema_decay must be in [0, 1), got {self.ema_decay}")
        check(self.bn_momentum is None or 0 <= self.bn_momentum <= 1, "bn_momentum must be in [0, 1] (PyTorch)")
        check(
            self.image_size is None or self.image_size >= MIN_INPUT_SIZE,
            f"image_size must be >= {MIN_INPUT_SIZE}, got {self.image_size}",
        )
        check(self.kd_temperature > 0, f"kd_temperature must be > 0, got {self.kd_temperature}")
        check(0 <= self.kd_alpha <= 1, f"kd_alpha must be in [0, 1], got {self.kd_alpha}")
        check(self.keep_last >= 1, f"keep_last must be >= 1, got {self.keep_last}")
        check(self.workers >= 0, f"workers must be >= 0, got {self.workers}")
        check(self.dali_threads >= 1, f"dali_threads must be >= 1, got {self.dali_threads}")
        check(
            not (self.teacher and self.soft_labels),
            "use either teacher (online distillation) or soft_labels (offline), not both",
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def list_recipes() -> list[str]:
    """Names of the recipes shipped in ``mnv4/recipes``."""
    return shipped_recipes(recipe_folder())


def load_recipe(name_or_path: str) -> dict[str, Any]:
    """A recipe's values as a dict: a shipped recipe name (``mobilenetv4_conv_small``) or a path to a TOML file."""
    return read_recipe(name_or_path, recipe_folder(), FIELDS, "TrainConfig")


def load_config(recipe: str | None = None, **overrides: Any) -> TrainConfig:
    """Defaults < recipe < ``overrides`` (``None`` overrides are ignored, so CLI flags left unset keep the recipe)."""
    values = {"recipe": recipe, **load_recipe(recipe)} if recipe else {}
    values = layered_values(values, overrides, FIELDS, "TrainConfig")
    return TrainConfig(**_tuples(values))


def config_from_dict(values: dict[str, Any]) -> TrainConfig:
    """Rebuild a config stored in a checkpoint (unknown keys from other versions are dropped)."""
    return TrainConfig(**_tuples({k: v for k, v in values.items() if k in FIELDS}))


def _tuples(values: dict[str, Any]) -> dict[str, Any]:
    """TOML and checkpoints store mean/std as lists; the config holds tuples."""
    return {k: tuple(v) if k in ("mean", "std") and isinstance(v, list) else v for k, v in values.items()}


def _has_type(value: Any, annotation: str) -> bool:
    """``value`` fits a field annotation such as ``'float | None'`` (ints pass as floats; bools are not numbers), so
    a recipe or ``--set`` value of the wrong type is one clear error instead of a TypeError deep in the run."""
    for kind in annotation.replace(" ", "").split("|"):
        if kind == "None" and value is None:
            return True
        if kind == "bool" and isinstance(value, bool):
            return True
        if kind == "str" and isinstance(value, str):
            return True
        if kind in ("int", "float") and isinstance(value, int) and not isinstance(value, bool):
            return True
        if kind == "float" and isinstance(value, float):
            return True
        if kind.startswith("tuple") and isinstance(value, tuple):
            return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    return False


__all__ = ["TrainConfig", "config_from_dict", "list_recipes", "load_config", "load_recipe"]
