"""Images for calibration (int8) and for accuracy checks of exported models.

A folder is either an ImageFolder root (``root/<class>/<image>``, classes sorted by name, as torchvision's
``ImageFolder``) or a flat folder of images (unlabelled, for calibration). Preprocessing is deliberately simple and
shared by every exporter and by the tests: RGB, bilinear resize to exactly (H, W), scale to [0, 1], normalise
with the model's mean/std (ImageNet's unless ``pretrained_cfg`` says otherwise).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".ppm", ".tif", ".tiff")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocess:
    """Resize to ``size`` (H, W), to [0, 1], normalise per channel; gives float32 CHW arrays."""

    size: tuple[int, int]
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    @classmethod
    def for_model(cls, model, size: tuple[int, int]) -> Preprocess:
        cfg = getattr(model, "pretrained_cfg", None) or {}
        return cls(tuple(size), tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD)))

    def __call__(self, path: str | Path) -> np.ndarray:
        from PIL import Image

        with Image.open(path) as img:
            img = img.convert("RGB").resize((self.size[1], self.size[0]), Image.BILINEAR)
            arr = np.asarray(img, dtype=np.float32) / 255.0
        arr = (arr - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(arr.transpose(2, 0, 1))


@dataclass(frozen=True)
class ImageSet:
    """Image paths with labels (-1 when the folder has no class sub-folders) and the class names."""

    paths: list[Path]
    labels: list[int]
    classes: list[str]

    @property
    def labelled(self) -> bool:
        return bool(self.classes)

    def __len__(self) -> int:
        return len(self.paths)


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def scan_folder(root: str | Path) -> ImageSet:
    """Read an ImageFolder root (labelled) or a flat folder of images (unlabelled)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist (expected a directory of images)")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and _images_in(p))
    if class_dirs:
        paths, labels = [], []
        for idx, d in enumerate(class_dirs):
            found = _images_in(d)
            paths += found
            labels += [idx] * len(found)
        return ImageSet(paths, labels, [d.name for d in class_dirs])
    paths = _images_in(root)
    if not paths:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found in {root}")
    return ImageSet(paths, [-1] * len(paths), [])


def calibration_images(root: str | Path, limit: int = 256, seed: int = 0) -> list[Path]:
    """Up to ``limit`` images from ``root``, a reproducible random sample spread over all classes."""
    if limit < 1:
        raise ValueError(f"the number of calibration images must be >= 1, got {limit}")
    paths = list(scan_folder(root).paths)
    random.Random(seed).shuffle(paths)
    return paths[:limit]


def load_batch(paths: list[Path], preprocess: Preprocess) -> np.ndarray:
    """Preprocessed images stacked as one float32 NCHW array."""
    return np.stack([preprocess(p) for p in paths]).astype(np.float32)
