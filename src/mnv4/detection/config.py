"""``DetectConfig``: every setting of a detection training run, and the recipes (TOML) that fill it.

Same conventions as classification's ``TrainConfig`` (``mnv4.train.config``): a recipe
(``src/mnv4/recipes/detection/<name>.toml``) is a flat table of fields; ``load_detect_config`` layers dataclass
defaults < recipe < explicit overrides (the CLI flags).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ..engine.config import (
    AT_LEAST_ONE,
    BELOW_ONE,
    FRACTION,
    NON_NEGATIVE,
    POSITIVE,
    Range,
    SupervisedConfig,
    ensure,
)
from ..recipe_files import layered_values, read_recipe, recipe_folder, shipped_recipes
from .augment import AUGMENTATIONS
from .models import ARCHITECTURES

OPTIMIZERS = ("adam", "adamw", "sgd")


@dataclass
class DetectConfig(SupervisedConfig):
    """One detection training run. ``global_batch`` is the optimiser batch; ``batch_size`` the images one process
    pushes through the model at once (the rest is gradient accumulation). The fields every run shares are
    ``RunConfig``'s and ``SupervisedConfig``'s (``mnv4.engine.config``)."""

    # what and where
    arch: str = "retinanet"
    backbone: str = "mobilenetv4_conv_medium"
    train_annotations: str = ""  # COCO instances JSON
    train_images: str = ""  # folder the JSON's file_name entries are relative to
    val_annotations: str = ""
    val_images: str = ""
    out: str = "runs/detect"
    recipe: str = ""

    # model (image_size None: 384 for RetinaNet, paper Tab. 7, or 320 for SSDLite)
    fpn_channels: int = 256
    frozen_bn: bool = False
    trainable_stages: int | None = None  # None: the whole backbone trains

    # schedule and batch
    global_batch: int = 32

    # optimiser: weight decay is L2 (coupled, in the gradient) for adam/sgd, decoupled for adamw; not on 1-D tensors
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9  # sgd
    weight_decay: float = 3e-5
    warmup_epochs: float = 0.0
    grad_clip: float | None = None

    # augmentation
    augment: str = "paper"
    scale_min: float = 0.5
    scale_max: float = 2.0
    randaug_layers: int = 2

    # evaluation
    score_thresh: float | None = None  # None: the detector's default (0.05 RetinaNet, 0.001 SSDLite)
    detections_per_img: int = 100  # COCO's maxDets
    eval_every: int = 1  # validate every n epochs (and after the last); 0 = only after the last

    # engine
    precision: str = "fp32"

    RANGES: ClassVar[dict[str, Range]] = {
        **SupervisedConfig.RANGES,
        "fpn_channels": Range(8),
        "trainable_stages": NON_NEGATIVE,
        "momentum": BELOW_ONE,
        "scale_min": POSITIVE,
        "scale_max": POSITIVE,
        "score_thresh": FRACTION,
        "detections_per_img": AT_LEAST_ONE,
        "eval_every": NON_NEGATIVE,
    }

    def check(self) -> None:
        ensure(self.arch in ARCHITECTURES, f"arch must be one of {ARCHITECTURES}, got {self.arch!r}")
        ensure(self.optimizer in OPTIMIZERS, f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        ensure(self.augment in AUGMENTATIONS, f"augment must be one of {AUGMENTATIONS}, got {self.augment!r}")
        ensure(self.scale_min <= self.scale_max,
               f"need 0 < scale_min <= scale_max, got {self.scale_min}, {self.scale_max}")
        ensure(bool(self.val_annotations) == bool(self.val_images),
               "give --val-annotations and --val-images together (the validation JSON and the folder of its "
               "pictures), or neither")

    def check_training_data(self) -> None:
        """What ``train_detector`` needs before it starts (a config for other uses may leave these empty)."""
        ensure(bool(self.train_annotations and self.train_images),
               "training needs train_annotations (COCO instances JSON) and train_images (its folder)")


FIELDS = DetectConfig.fields()


def list_detect_recipes() -> list[str]:
    """Names of the detection recipes shipped in ``mnv4/recipes/detection``."""
    return shipped_recipes(recipe_folder("detection"))


def load_detect_recipe(name_or_path: str) -> dict[str, Any]:
    """A recipe's values: a shipped recipe name (``retinanet_paper``) or a path to a TOML file."""
    return read_recipe(name_or_path, recipe_folder("detection"), FIELDS, "DetectConfig", "detection recipe")


def load_detect_config(recipe: str | None = None, **overrides: Any) -> DetectConfig:
    """Defaults < recipe < ``overrides`` (``None`` overrides are ignored, so CLI flags left unset keep the recipe)."""
    values = {"recipe": recipe, **load_detect_recipe(recipe)} if recipe else {}
    return DetectConfig.from_dict(layered_values(values, overrides, FIELDS, "DetectConfig"))


def detect_config_from_dict(values: dict[str, Any]) -> DetectConfig:
    """Rebuild a config stored in a checkpoint (keys of other versions dropped)."""
    return DetectConfig.from_dict(values)
