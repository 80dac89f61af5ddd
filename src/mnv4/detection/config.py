"""``DetectConfig``: every setting of a detection training run, and the recipes (TOML) that fill it.

Same conventions as classification's ``TrainConfig`` (``mnv4.train.config``): a recipe
(``src/mnv4/recipes/detection/<name>.toml``) is a flat table of fields; ``load_detect_config`` layers dataclass
defaults < recipe < explicit overrides (the CLI flags).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..errors import UserError
from ..recipe_files import layered_values, read_recipe, recipe_folder, shipped_recipes
from ..specs import MIN_INPUT_SIZE
from ..train.config import PRECISIONS
from .augment import AUGMENTATIONS
from .models import ARCHITECTURES

OPTIMIZERS = ("adam", "adamw", "sgd")


@dataclass
class DetectConfig:
    """One detection training run. ``global_batch`` is the optimiser batch; ``batch_size`` the images one process
    pushes through the model at once (the rest is gradient accumulation)."""

    # what and where
    arch: str = "retinanet"
    backbone: str = "mobilenetv4_conv_medium"
    pretrained: str | bool = False  # backbone weights: True (the tag's ImageNet weights) or a weights file
    train_annotations: str = ""  # COCO instances JSON
    train_images: str = ""  # folder the JSON's file_name entries are relative to
    val_annotations: str = ""
    val_images: str = ""
    out: str = "runs/detect"
    recipe: str = ""

    # model
    image_size: int | None = None  # None: 384 (RetinaNet, paper Tab. 7) or 320 (SSDLite)
    fpn_channels: int = 256
    frozen_bn: bool = False
    trainable_stages: int | None = None  # None: the whole backbone trains
    drop_path: float = 0.0

    # schedule and batch
    epochs: float = 10
    global_batch: int = 32
    batch_size: int | None = None
    max_steps: int | None = None

    # optimiser: weight decay is L2 (coupled, in the gradient) for adam/sgd, decoupled for adamw; not on 1-D tensors
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9  # sgd
    beta1: float = 0.9
    beta2: float = 0.999
    adam_eps: float = 1e-8
    weight_decay: float = 3e-5
    warmup_epochs: float = 0.0
    min_lr_fraction: float = 0.0
    grad_clip: float | None = None
    ema_decay: float | None = None
    ema_start_epochs: float = 0.0

    # augmentation
    augment: str = "paper"
    hflip: bool = True
    scale_min: float = 0.5
    scale_max: float = 2.0
    randaug_layers: int = 2
    randaug_magnitude: float = 9.0
    randaug_prob: float = 1.0

    # evaluation
    score_thresh: float | None = None  # None: the detector's default (0.05 RetinaNet, 0.001 SSDLite)
    detections_per_img: int = 100  # COCO's maxDets
    eval_every: int = 1  # validate every n epochs (and after the last); 0 = only after the last

    # engine
    device: str = "auto"
    precision: str = "fp32"
    sync_bn: bool = False
    workers: int = 4
    seed: int = 0
    deterministic: bool = False
    threads: int | None = None

    # checkpoints and logs
    resume: str | None = None
    save_every_steps: int = 0
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

        check(self.arch in ARCHITECTURES, f"arch must be one of {ARCHITECTURES}, got {self.arch!r}")
        check(self.optimizer in OPTIMIZERS, f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        check(self.augment in AUGMENTATIONS, f"augment must be one of {AUGMENTATIONS}, got {self.augment!r}")
        check(self.precision in PRECISIONS, f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        check(self.epochs > 0, f"epochs must be > 0, got {self.epochs}")
        check(self.global_batch >= 1, f"global_batch must be >= 1, got {self.global_batch}")
        check(self.batch_size is None or self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        check(self.lr > 0, f"lr must be > 0, got {self.lr}")
        check(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        check(self.warmup_epochs >= 0, f"warmup_epochs must be >= 0, got {self.warmup_epochs}")
        check(0 <= self.min_lr_fraction <= 1, f"min_lr_fraction must be in [0, 1], got {self.min_lr_fraction}")
        check(0 <= self.drop_path < 1, f"drop_path must be in [0, 1), got {self.drop_path}")
        check(0 < self.scale_min <= self.scale_max, f"need 0 < scale_min <= scale_max, got {self.scale_min}, "
              f"{self.scale_max}")
        check(0 <= self.randaug_prob <= 1, f"randaug_prob must be in [0, 1], got {self.randaug_prob}")
        check(self.ema_decay is None or 0 <= self.ema_decay < 1, f"ema_decay must be in [0, 1), got {self.ema_decay}")
        check(self.image_size is None or self.image_size >= MIN_INPUT_SIZE,
              f"image_size must be >= {MIN_INPUT_SIZE}, got {self.image_size}")
        check(self.fpn_channels >= 8, f"fpn_channels must be >= 8, got {self.fpn_channels}")
        check(self.detections_per_img >= 1, f"detections_per_img must be >= 1, got {self.detections_per_img}")
        check(self.eval_every >= 0, f"eval_every must be >= 0, got {self.eval_every}")
        check(self.keep_last >= 1, f"keep_last must be >= 1, got {self.keep_last}")
        check(self.workers >= 0, f"workers must be >= 0, got {self.workers}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in dataclasses.fields(DetectConfig)}


def list_detect_recipes() -> list[str]:
    """Names of the detection recipes shipped in ``mnv4/recipes/detection``."""
    return shipped_recipes(recipe_folder("detection"))


def load_detect_recipe(name_or_path: str) -> dict[str, Any]:
    """A recipe's values: a shipped recipe name (``retinanet_paper``) or a path to a TOML file."""
    return read_recipe(name_or_path, recipe_folder("detection"), FIELDS, "DetectConfig", "detection recipe")


def load_detect_config(recipe: str | None = None, **overrides: Any) -> DetectConfig:
    """Defaults < recipe < ``overrides`` (``None`` overrides are ignored, so CLI flags left unset keep the recipe)."""
    values = {"recipe": recipe, **load_detect_recipe(recipe)} if recipe else {}
    return DetectConfig(**layered_values(values, overrides, FIELDS, "DetectConfig"))


def detect_config_from_dict(values: dict[str, Any]) -> DetectConfig:
    """Rebuild a config stored in a checkpoint (keys of other versions dropped)."""
    return DetectConfig(**{k: v for k, v in values.items() if k in FIELDS})
