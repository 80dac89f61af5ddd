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

from dataclasses import dataclass
from typing import Any, ClassVar

from ..engine.config import (
    AT_LEAST_ONE,
    FRACTION,
    NON_NEGATIVE,
    OPEN_FRACTION,
    POSITIVE,
    PRECISIONS,  # noqa: F401 (the precisions of every run, named here since earlier versions)
    Range,
    SupervisedConfig,
    ensure,
)
from ..recipe_files import layered_values, read_recipe, recipe_folder, shipped_recipes
from ..transforms import INTERPOLATIONS

PIPELINES = ("cpu", "gpu", "dali")
DROP_PATH_SCHEDULES = ("linear", "flat")


@dataclass
class TrainConfig(SupervisedConfig):
    """One training run. Batch sizes: ``global_batch`` is the optimiser batch (the recipe's); ``batch_size`` is what
    one process pushes through the model at once; the difference is made up by gradient accumulation. The fields
    every run shares are ``RunConfig``'s and ``SupervisedConfig``'s (``mnv4.engine.config``).

    ``None`` means "fitted when the run starts" (see ``mnv4.train.plan`` and ``mnv4.train.inputs``); a run stores the
    resolved values in its checkpoints."""

    # what and where
    model: str = "mobilenetv4_conv_small"
    data: str = ""  # ImageFolder root with train/ and val/ sub-folders
    out: str = "runs/train"
    recipe: str = ""  # name of the recipe the values came from (informational, stored in checkpoints)
    attn_impl: str = "sdpa"

    # schedule and batch (global_batch None: fitted to the data set, up to 256, >= 30 steps per epoch;
    # warmup_epochs None: min(1, epochs / 10))

    # optimiser: AdamW without weight decay on BN, biases and layer-scale gammas
    l2: float = 0.0  # extra coupled L2 (loss += l2/2 * |w|^2 on decayed weights), TF's ``l2_weight_decay``
    backbone_lr_scale: float = 1.0  # fine-tuning: LR multiplier for everything but the classifier

    # loss and regularisation
    label_smoothing: float = 0.1
    dropout: float = 0.0
    drop_path_schedule: str = "linear"  # 'linear' in block index (timm / TF non-flat) or 'flat' (same everywhere)
    bn_momentum: float | None = None  # PyTorch convention (= 1 - Keras momentum); None keeps the model's 0.1
    bn_eps: float | None = None  # None keeps the model's 1e-5

    # augmentation
    # Inception crop area range (crop_scale_min, 1). Default: 0.35 (the finetune recipe's) for the short runs on small
    # data sets the defaults are for; the paper recipes set Inception's 0.08, made for hundreds of ImageNet epochs
    crop_scale_min: float = 0.35
    # validation follows the model's evaluation protocol (``mnv4.data_config(model)``: the one ``mnv4 eval`` uses)
    # unless these are set: resize to image_size / val_crop_pct with val_interpolation, centre-crop image_size
    val_crop_pct: float | None = None
    val_interpolation: str | None = None
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

    # engine. precision / channels_last / compile None: fitted to the device when the run starts
    # (``mnv4.train.plan.fit_to_device``): on CUDA bf16 autocast, channels_last and torch.compile (the throughput
    # settings); on the CPU fp32, NCHW, eager
    channels_last: bool | None = None
    compile: bool | None = None
    data_pipeline: str = "cpu"  # 'gpu': torchvision nvJPEG + GPU crops; 'dali': mnv4.train.dali
    dali_threads: int = 4  # data_pipeline='dali': DALI's own CPU threads (decode / Huffman), per process

    RANGES: ClassVar[dict[str, Range]] = {
        **SupervisedConfig.RANGES,
        "l2": NON_NEGATIVE,
        "backbone_lr_scale": NON_NEGATIVE,
        "label_smoothing": FRACTION,
        "dropout": FRACTION,
        "bn_momentum": FRACTION,
        "bn_eps": POSITIVE,
        "crop_scale_min": OPEN_FRACTION,
        "val_crop_pct": OPEN_FRACTION,
        "mixup_prob": FRACTION,
        "mixup_alpha": NON_NEGATIVE,
        "cutmix_alpha": NON_NEGATIVE,
        "mixup_switch_prob": FRACTION,
        "kd_temperature": POSITIVE,
        "kd_alpha": FRACTION,
        "dali_threads": AT_LEAST_ONE,
    }

    def check(self) -> None:
        ensure(self.data_pipeline in PIPELINES, f"data_pipeline must be one of {PIPELINES}, got {self.data_pipeline!r}")
        ensure(
            self.drop_path_schedule in DROP_PATH_SCHEDULES,
            f"drop_path_schedule must be one of {DROP_PATH_SCHEDULES}, got {self.drop_path_schedule!r}",
        )
        ensure(
            self.val_interpolation in (None, *INTERPOLATIONS),
            f"val_interpolation must be one of {INTERPOLATIONS}, got {self.val_interpolation!r}",
        )
        for name in ("mean", "std"):
            value = getattr(self, name)
            ensure(value is None or len(value) == 3, f"{name} needs 3 values (R, G, B), got {value}")
        ensure(self.std is None or min(self.std) > 0, f"std values must be > 0, got {self.std}")
        ensure(
            not (self.teacher and self.soft_labels),
            "use either teacher (online distillation) or soft_labels (offline), not both",
        )


FIELDS = TrainConfig.fields()


def list_recipes() -> list[str]:
    """Names of the recipes shipped in ``mnv4/recipes``."""
    return shipped_recipes(recipe_folder())


def load_recipe(name_or_path: str) -> dict[str, Any]:
    """A recipe's values as a dict: a shipped recipe name (``mobilenetv4_conv_small``) or a path to a TOML file."""
    return read_recipe(name_or_path, recipe_folder(), FIELDS, "TrainConfig")


def load_config(recipe: str | None = None, **overrides: Any) -> TrainConfig:
    """Defaults < recipe < ``overrides`` (``None`` overrides are ignored, so CLI flags left unset keep the recipe)."""
    values = {"recipe": recipe, **load_recipe(recipe)} if recipe else {}
    return TrainConfig.from_dict(layered_values(values, overrides, FIELDS, "TrainConfig"))


def config_from_dict(values: dict[str, Any]) -> TrainConfig:
    """Rebuild a config stored in a checkpoint (unknown keys from other versions are dropped)."""
    return TrainConfig.from_dict(values)


__all__ = ["TrainConfig", "config_from_dict", "list_recipes", "load_config", "load_recipe"]
