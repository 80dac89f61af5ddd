"""``TrainConfig``: every setting of a training run, and the recipe files (TOML) that fill it.

A recipe (``src/mnv4/recipes/<name>.toml``) is a flat table of ``TrainConfig`` fields. ``load_config`` layers:
dataclass defaults < recipe < explicit overrides (the CLI flags), so a recipe reproduces the paper and a flag changes
one thing. Values and their sources are documented in the recipe files (paper Tab. 10 vs the official TF configs,
spec §7).
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from ..specs import MIN_INPUT_SIZE

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

PRECISIONS = ("fp32", "bf16", "fp16")
PIPELINES = ("cpu", "gpu")
DROP_PATH_SCHEDULES = ("linear", "flat")


@dataclass
class TrainConfig:
    """One training run. Batch sizes: ``global_batch`` is the optimiser batch (the recipe's); ``batch_size`` is what
    one process pushes through the model at once; the difference is made up by gradient accumulation."""

    # what and where
    model: str = "mobilenetv4_conv_small"
    data: str = ""  # ImageFolder root with train/ and val/ sub-folders
    out: str = "runs/train"
    recipe: str = ""  # name of the recipe the values came from (informational, stored in checkpoints)
    pretrained: str | bool = False  # True (the default tag) or a weights file; the classifier is re-made for the data
    attn_impl: str = "sdpa"

    # schedule and batch
    epochs: float = 10
    global_batch: int = 256
    batch_size: int | None = None  # per process and per micro-step; None = global_batch / world size
    max_steps: int | None = None  # stop after this many optimiser steps (for smoke runs); None = epochs

    # optimiser: AdamW without weight decay on BN, biases and layer-scale gammas
    lr: float = 2e-3
    min_lr_fraction: float = 0.0  # cosine decay "alpha": the final LR as a fraction of the peak
    warmup_epochs: float = 0.0
    weight_decay: float = 0.05
    beta1: float = 0.9
    beta2: float = 0.999
    adam_eps: float = 1e-8
    l2: float = 0.0  # extra coupled L2 (loss += l2/2 * |w|^2 on decayed weights), TF's ``l2_weight_decay``
    grad_clip: float | None = None
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
    crop_scale_min: float = 0.08  # Inception crop area range (crop_scale_min, 1)
    crop_pct: float = 0.875  # validation: resize to image_size / crop_pct, then centre-crop image_size
    hflip: bool = True
    randaug_layers: int = 0
    randaug_magnitude: float = 9.0  # TF scale 0..10 (see data.py for the mapping to torchvision)
    randaug_prob: float = 1.0  # probability to apply each of the randaug_layers ops (TF ``prob_to_apply``)
    mixup_prob: float = 0.0  # probability that a batch is mixed at all
    mixup_alpha: float = 0.8
    cutmix_alpha: float = 1.0
    mixup_switch_prob: float = 0.5  # probability of CutMix instead of Mixup for a mixed batch
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

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
    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False
    sync_bn: bool = False
    data_pipeline: str = "cpu"  # 'gpu': JPEG bytes decoded with nvJPEG and augmented on the GPU
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
                raise ValueError(msg)

        check(self.precision in PRECISIONS, f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        check(self.data_pipeline in PIPELINES, f"data_pipeline must be one of {PIPELINES}, got {self.data_pipeline!r}")
        check(
            self.drop_path_schedule in DROP_PATH_SCHEDULES,
            f"drop_path_schedule must be one of {DROP_PATH_SCHEDULES}, got {self.drop_path_schedule!r}",
        )
        check(self.epochs > 0, f"epochs must be > 0, got {self.epochs}")
        check(self.global_batch >= 1, f"global_batch must be >= 1, got {self.global_batch}")
        check(self.batch_size is None or self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        check(self.lr > 0, f"lr must be > 0, got {self.lr}")
        check(0 <= self.min_lr_fraction <= 1, f"min_lr_fraction must be in [0, 1], got {self.min_lr_fraction}")
        check(self.warmup_epochs >= 0, f"warmup_epochs must be >= 0, got {self.warmup_epochs}")
        for name in ("dropout", "drop_path", "label_smoothing", "randaug_prob", "mixup_prob", "mixup_switch_prob"):
            value = getattr(self, name)
            check(0 <= value <= 1, f"{name} must be in [0, 1], got {value}")
        check(0 < self.crop_scale_min <= 1, f"crop_scale_min must be in (0, 1], got {self.crop_scale_min}")
        check(0 < self.crop_pct <= 1, f"crop_pct must be in (0, 1], got {self.crop_pct}")
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
        check(
            not (self.teacher and self.soft_labels),
            "use either teacher (online distillation) or soft_labels (offline), not both",
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def list_recipes() -> list[str]:
    """Names of the recipes shipped in ``mnv4/recipes``."""
    folder = resources.files("mnv4") / "recipes"
    return sorted(p.name[: -len(".toml")] for p in folder.iterdir() if p.name.endswith(".toml"))


def load_recipe(name_or_path: str) -> dict[str, Any]:
    """A recipe's values as a dict: a shipped recipe name (``mobilenetv4_conv_small``) or a path to a TOML file."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise FileNotFoundError(f"recipe file {str(path)!r} does not exist")
        text = path.read_text()
    else:
        names = list_recipes()
        if name_or_path not in names:
            raise ValueError(f"unknown recipe {name_or_path!r}; shipped recipes: {', '.join(names)} (or a .toml path)")
        text = (resources.files("mnv4") / "recipes" / f"{name_or_path}.toml").read_text()
    try:
        values = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"recipe {name_or_path!r} is not valid TOML: {err}") from None
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        raise ValueError(f"recipe {name_or_path!r} has unknown keys {unknown}; valid keys are the TrainConfig fields")
    return values


def load_config(recipe: str | None = None, **overrides: Any) -> TrainConfig:
    """Defaults < recipe < ``overrides`` (``None`` overrides are ignored, so CLI flags left unset keep the recipe)."""
    values: dict[str, Any] = {}
    if recipe:
        values.update(load_recipe(recipe))
        values.setdefault("recipe", recipe)
    unknown = sorted(set(overrides) - set(FIELDS))
    if unknown:
        raise ValueError(f"unknown TrainConfig fields {unknown}")
    values.update({k: v for k, v in overrides.items() if v is not None})
    for key in ("mean", "std"):
        if key in values:
            values[key] = tuple(values[key])
    return TrainConfig(**values)


def config_from_dict(values: dict[str, Any]) -> TrainConfig:
    """Rebuild a config stored in a checkpoint (unknown keys from other versions are dropped)."""
    kept = {k: v for k, v in values.items() if k in FIELDS}
    for key in ("mean", "std"):
        if key in kept:
            kept[key] = tuple(kept[key])
    return TrainConfig(**kept)


__all__ = ["TrainConfig", "config_from_dict", "list_recipes", "load_config", "load_recipe"]
