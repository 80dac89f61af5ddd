"""``SegmentConfig``: every setting of a segmentation training run, and the recipes (TOML) that fill it.

Same conventions as classification's ``TrainConfig`` and detection's ``DetectConfig``: a recipe
(``src/mnv4/recipes/segmentation/<name>.toml``) is a flat table of fields; ``load_segment_config`` layers dataclass
defaults < recipe < explicit overrides (the CLI flags). The defaults are torchvision's segmentation reference
(``references/segmentation/train.py``: SGD momentum 0.9, lr 0.01, poly decay per step, 30 epochs, weight decay 1e-4,
random resize 0.5-2x, flip); the shipped recipes say where they differ.

Data comes in one of two forms per split, checked before any work:

- a mask folder: ``train_images`` + ``train_masks`` (+ an optional ``train_split`` file), and ``num_classes``
  (labels 0..num_classes-1, 255 ignored; ``mnv4.segmentation.load_mask_folder``);
- COCO instances: ``train_annotations`` + ``train_images`` (the folder its file names are relative to), the
  ``categories`` to segment (None: all) and the ``crowd`` rule (``mnv4.segmentation.load_coco_masks``).

The ``val_*`` fields take the same forms (optional: without them no mIoU is measured during training).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ..engine.config import (
    AT_LEAST_ONE,
    BELOW_ONE,
    NON_NEGATIVE,
    POSITIVE,
    Range,
    SupervisedConfig,
    ensure,
)
from ..engine.optim import SCHEDULES
from ..model import OUTPUT_STRIDES
from ..recipe_files import layered_values, read_recipe, recipe_folder, shipped_recipes
from ..specs import MIN_INPUT_SIZE
from .data import CROWD_MODES, IGNORE_INDEX
from .models import ARCHITECTURES

OPTIMIZERS = ("sgd", "adamw", "adam")


@dataclass
class SegmentConfig(SupervisedConfig):
    """One segmentation training run. ``global_batch`` is the optimiser batch; ``batch_size`` the images one process
    pushes through the model at once (the rest is gradient accumulation). The fields every run shares are
    ``RunConfig``'s and ``SupervisedConfig``'s (``mnv4.engine.config``); ``pretrained`` loads the backbone's ImageNet
    weights ('true': the tag's, or a file)."""

    # what and where
    arch: str = "lraspp"
    model: str = "mobilenetv4_conv_medium"  # the backbone: a variant, variant.tag or spec file
    out: str = "runs/segment"
    recipe: str = ""

    # data (see the module docstring): a mask folder or a COCO file per split
    train_images: str = ""
    train_masks: str = ""
    train_split: str = ""  # mask folders: a text file of the names to use (VOC's ImageSets/Segmentation/train.txt)
    train_annotations: str = ""  # COCO instances JSON (its images in train_images)
    val_images: str = ""
    val_masks: str = ""
    val_split: str = ""
    val_annotations: str = ""
    num_classes: int | None = None  # every label, background included; COCO: found from the categories
    class_names: str = ""  # a text file: one class name per line, in label order (COCO: the categories' names)
    categories: tuple[int, ...] | None = None  # COCO: the category ids of labels 1..K, in order (None: all, by id)
    crowd: str = "ignore"  # COCO crowd regions: 'ignore' (255) or 'label' (torchvision's reference)

    # model
    output_stride: int = 16
    inter_channels: int = 128  # LR-ASPP's
    aux: bool = False  # DeepLabV3: the FCN head on the /8 map and its auxiliary loss
    atrous_rates: tuple[int, int, int] | None = None  # DeepLabV3's ASPP rates; None: by output stride
    image_size: int = 512  # evaluation resizes the shorter side to this; the base of the training resize
    crop_size: int | None = None  # the training crop; None: image_size

    # schedule, batch and optimiser (torchvision's reference: SGD, lr 0.01, poly decay, no warm-up)
    epochs: float = 30
    global_batch: int = 8
    optimizer: str = "sgd"  # weight decay is L2 (coupled) for sgd/adam, decoupled for adamw; not on BN / biases
    lr: float = 0.01
    momentum: float = 0.9  # sgd
    weight_decay: float = 1e-4
    lr_schedule: str = "poly"  # 'poly' ((1 - t)^0.9 per step) or 'cosine' (mnv4.engine.optim.SCHEDULES)
    warmup_epochs: float = 0.0
    grad_clip: float | None = None

    # loss and augmentation
    aux_weight: float = 0.5  # weight of the aux head's cross-entropy (torchvision's reference)
    scale_min: float = 0.5  # the random resize: image_size x U(scale_min, scale_max) on the shorter side
    scale_max: float = 2.0

    # evaluation
    eval_every: int = 1  # validate every n epochs (and after the last); 0 = only after the last

    RANGES: ClassVar[dict[str, Range]] = {
        **SupervisedConfig.RANGES,
        "num_classes": Range(2, IGNORE_INDEX),
        "output_stride": Range(8, 32),
        "inter_channels": AT_LEAST_ONE,
        "crop_size": Range(MIN_INPUT_SIZE),
        "momentum": BELOW_ONE,
        "aux_weight": NON_NEGATIVE,
        "scale_min": POSITIVE,
        "scale_max": POSITIVE,
        "eval_every": NON_NEGATIVE,
    }

    def check(self) -> None:
        ensure(self.arch in ARCHITECTURES, f"arch must be one of {ARCHITECTURES}, got {self.arch!r}")
        ensure(self.output_stride in OUTPUT_STRIDES,
               f"output_stride must be one of {OUTPUT_STRIDES}, got {self.output_stride}")
        ensure(not self.aux or self.arch == "deeplabv3",
               "aux (the FCN head on the /8 map) is DeepLabV3's: pass --arch deeplabv3 or leave --aux out")
        ensure(self.atrous_rates is None or (self.arch == "deeplabv3" and len(self.atrous_rates) == 3 and all(
            isinstance(r, int) and r >= 1 for r in self.atrous_rates)),
            f"atrous_rates are DeepLabV3's: three ints >= 1, got {self.atrous_rates}")
        ensure(self.optimizer in OPTIMIZERS, f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        ensure(self.lr_schedule in SCHEDULES,
               f"lr_schedule must be one of {tuple(SCHEDULES)}, got {self.lr_schedule!r}")
        ensure(self.scale_min <= self.scale_max,
               f"need 0 < scale_min <= scale_max, got {self.scale_min}, {self.scale_max}")
        ensure(self.randaug_layers == 0,
               "RandAugment is not applied to segmentation (its geometric ops would need the mask too); leave "
               "randaug_layers at 0")
        ensure(self.crowd in CROWD_MODES, f"crowd must be one of {CROWD_MODES}, got {self.crowd!r}")
        if self.categories is not None:
            ensure(len(self.categories) > 0 and all(isinstance(c, int) for c in self.categories)
                   and len(set(self.categories)) == len(self.categories),
                   f"categories must be distinct COCO category ids (ints), got {list(self.categories)}")
        for split in ("train", "val"):
            self._check_source(split)

    def _check_source(self, split: str) -> None:
        """A split is a mask folder (images + masks [+ split]) or a COCO file (annotations + images), not both."""
        images, masks, names, annotations = (getattr(self, f"{split}_{k}")
                                             for k in ("images", "masks", "split", "annotations"))
        flag = f"--{split}"
        ensure(not (masks and annotations),
               f"{flag}-masks (a mask folder) and {flag}-annotations (COCO) are two forms of one data set: give one")
        ensure(not (names and not masks), f"{flag}-split selects pairs of a mask folder: it needs {flag}-masks")
        ensure(not ((masks or annotations) and not images),
               f"{flag}-images is needed with {flag}-{'masks' if masks else 'annotations'} (the folder of the "
               "pictures)")
        ensure(not (images and not (masks or annotations)),
               f"{flag}-images needs its labels: {flag}-masks DIR (PNG masks) or {flag}-annotations FILE (COCO)")

    def check_training_data(self) -> None:
        """What ``train_segmenter`` needs before it starts (a config for other uses may leave these empty): a
        training set, its files and folders present, ``num_classes`` for mask folders."""
        ensure(bool(self.train_images),
               "training needs data: --train-images DIR with --train-masks DIR (PNG masks) or --train-annotations "
               "FILE (COCO instances)")
        for name in ("train_images", "train_masks", "val_images", "val_masks"):
            value = getattr(self, name)
            ensure(not value or Path(value).is_dir(),
                   f"--{name.replace('_', '-')} {value}: " + ("is a file, not a folder" if Path(value).exists()
                                                              else "does not exist"))
        for name in ("train_split", "train_annotations", "val_split", "val_annotations", "class_names"):
            value = getattr(self, name)
            ensure(not value or Path(value).is_file(),
                   f"--{name.replace('_', '-')} {value}: " + ("is a folder, not a file" if Path(value).exists()
                                                              else "does not exist"))
        ensure(self.num_classes is not None or not (self.train_masks or self.val_masks),
               "a mask folder needs --num-classes N: every label its masks hold, the background included (labels "
               "0..N-1; 255 = ignore)")


FIELDS = SegmentConfig.fields()


def list_segment_recipes() -> list[str]:
    """Names of the segmentation recipes shipped in ``mnv4/recipes/segmentation``."""
    return shipped_recipes(recipe_folder("segmentation"))


def load_segment_recipe(name_or_path: str) -> dict[str, Any]:
    """A recipe's values: a shipped recipe name (``lraspp_torchvision``) or a path to a TOML file."""
    return read_recipe(name_or_path, recipe_folder("segmentation"), FIELDS, "SegmentConfig", "segmentation recipe")


def load_segment_config(recipe: str | None = None, **overrides: Any) -> SegmentConfig:
    """Defaults < recipe < ``overrides`` (``None`` overrides are ignored, so CLI flags left unset keep the recipe)."""
    values = {"recipe": recipe, **load_segment_recipe(recipe)} if recipe else {}
    return SegmentConfig.from_dict(layered_values(values, overrides, FIELDS, "SegmentConfig"))


def segment_config_from_dict(values: dict[str, Any]) -> SegmentConfig:
    """Rebuild a config stored in a checkpoint (keys of other versions dropped)."""
    return SegmentConfig.from_dict(values)
