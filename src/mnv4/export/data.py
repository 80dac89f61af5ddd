"""Images for calibration (int8) and for accuracy checks of exported models (``export --eval``).

Folders, labels and decoding are ``mnv4.images``' (the loader and scanner of ``mnv4 eval`` and training), and the
preprocessing is the tag's evaluation protocol, ``eval_transform(data_config(model, img_size=size))``. So a
calibration image is what the model sees in ``mnv4 eval``, and the PyTorch column of ``export --eval`` is the top-1
``mnv4 eval`` reports on the same folder.

An image that cannot be decoded raises ``mnv4.images.DecodeError`` (a ``UserError`` naming the file), or, when the
caller passes a ``skipped`` list, is left out of the batch and recorded there, so the caller can count and report it.
"""

from __future__ import annotations

import functools
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..images import DecodeError, ImageSet, load_image, scan_images
from ..transforms import DEFAULT_CROP_PCT, DataConfig, data_config, eval_transform
from ..weights import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["DecodeError", "ImageSet", "LoadedImages", "Preprocess", "calibration_images", "load_batch",
           "load_images", "scan_folder"]

log = logging.getLogger("mnv4.export")


@dataclass(frozen=True)
class Preprocess:
    """An image file -> float32 CHW array: ``load_image`` then ``eval_transform`` of this config.

    ``Preprocess.for_model(model, size)`` is the model's own protocol (its tag's crop, interpolation, mean/std) at
    ``size``; ``Preprocess(size)`` alone is timm's generic one (crop 0.875, bicubic, ImageNet mean/std)."""

    size: tuple[int, int]
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    crop_pct: float = DEFAULT_CROP_PCT
    interpolation: str = "bicubic"

    @classmethod
    def for_model(cls, model, size: tuple[int, int]) -> Preprocess:
        cfg = data_config(model, img_size=tuple(size))
        return cls(tuple(size), tuple(cfg.mean), tuple(cfg.std), cfg.crop_pct, cfg.interpolation)

    @property
    def config(self) -> DataConfig:
        return DataConfig(input_size=(len(self.mean), *self.size), interpolation=self.interpolation,
                          mean=tuple(self.mean), std=tuple(self.std), crop_pct=self.crop_pct)

    @functools.cached_property
    def transform(self):
        return eval_transform(self.config)

    def __call__(self, path: str | Path) -> np.ndarray:
        return self.transform(load_image(path)).numpy()


def scan_folder(root: str | Path) -> ImageSet:
    """An ImageFolder root (labelled) or a flat folder of images (unlabelled); ``mnv4.images.scan_images``."""
    return scan_images(root)


def calibration_images(root: str | Path, limit: int = 256, seed: int = 0) -> list[Path]:
    """Up to ``limit`` images from ``root``, a reproducible random sample spread over all classes."""
    if limit < 1:
        raise UserError(f"the number of calibration images must be >= 1, got {limit}")
    paths = list(scan_folder(root).paths)
    random.Random(seed).shuffle(paths)
    return paths[:limit]


@dataclass(frozen=True)
class LoadedImages:
    """What ``load_images`` decoded: ``array`` (N, C, H, W) float32 holds the files at positions ``kept`` of the
    asked list; ``skipped`` the errors of the others."""

    array: np.ndarray
    kept: list[int]
    skipped: list[DecodeError]


def load_images(paths: Sequence[str | Path], preprocess: Preprocess) -> LoadedImages:
    """Preprocess ``paths``, leaving out the files that cannot be decoded (each logged; their errors in
    ``skipped``)."""
    arrays, kept, skipped = [], [], []
    for i, path in enumerate(paths):
        try:
            arrays.append(preprocess(path))
            kept.append(i)
        except DecodeError as err:
            log.warning("skipped %s", err)
            skipped.append(err)
    empty = np.zeros((0, len(preprocess.mean), *preprocess.size), np.float32)
    return LoadedImages(np.stack(arrays).astype(np.float32) if arrays else empty, kept, skipped)


def load_batch(
    paths: Sequence[str | Path], preprocess: Preprocess, skipped: list[DecodeError] | None = None
) -> np.ndarray:
    """Preprocessed images stacked as one float32 NCHW array. A file that cannot be decoded raises its
    ``DecodeError``; with ``skipped`` given it is left out of the array (which may then have fewer rows than
    ``paths``, even none), logged, and its error appended to ``skipped``."""
    if skipped is None:
        return np.stack([preprocess(p) for p in paths]).astype(np.float32)
    loaded = load_images(paths, preprocess)
    skipped.extend(loaded.skipped)
    return loaded.array
