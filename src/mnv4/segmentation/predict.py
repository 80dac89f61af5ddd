"""Segmentation of image files: a class per pixel at the image's own size, written as a raw mask and an overlay.

The protocol, shared with ``evaluate_segmenter``: the image resized so its shorter side is the spec's
``image_size`` (the size the segmenter trained at) and normalised, the logits upsampled bilinearly back to the
image's size, then the argmax. One unreadable file does not stop the others.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ..images import load_image
from .data import EvalTransform
from .models import SegmenterSpec


@torch.no_grad()
def class_maps(model: nn.Module, images: torch.Tensor, sizes: Sequence[tuple[int, int]]) -> list[torch.Tensor]:
    """Class numbers (H, W) for each of ``images`` (a normalised batch, B x 3 x h x w), at ``sizes[i]`` = (H, W):
    the model's logits upsampled bilinearly to that size, then the argmax."""
    logits = model(images)["out"]
    return [F.interpolate(logits[i : i + 1], size=tuple(size), mode="bilinear", align_corners=False)[0].argmax(0)
            for i, size in enumerate(sizes)]


@dataclass
class Segmentation:
    """One image's result: ``mask`` (H, W) class numbers (uint8, or int32 past 255 classes) at the image's own
    size; ``error`` set (``mask`` None) if the file could not be read."""

    path: str
    mask: np.ndarray | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def class_fractions(self, class_names: Sequence[str]) -> dict[str, float]:
        """The share of the image's pixels given to each predicted class, largest first."""
        counts = np.bincount(self.mask.ravel(), minlength=len(class_names)) / self.mask.size
        order = np.argsort(-counts)
        return {class_names[c]: round(float(counts[c]), 4) for c in order if counts[c] > 0}


@torch.inference_mode()
def segment(
    model: nn.Module,
    spec: SegmenterSpec,
    images: Sequence[str | os.PathLike],
    device: str | torch.device = "cpu",
    resize: bool = True,
) -> list[Segmentation]:
    """Run ``model`` (put in eval mode) on each image file; ``resize=False`` runs each image at its own size."""
    from torchvision.transforms.v2.functional import pil_to_tensor

    model = model.eval().to(device)
    transform = EvalTransform(spec.image_size if resize else None, spec.mean, spec.std)
    dtype = np.uint8 if spec.num_classes <= 256 else np.int32
    results = []
    for path in images:
        try:
            image = load_image(path)
        except (ValueError, FileNotFoundError) as err:  # DecodeError is a ValueError (UserError)
            results.append(Segmentation(str(path), error=str(err)))
            continue
        x = transform.image(pil_to_tensor(image))
        mask = class_maps(model, x[None].to(device), [image.size[::-1]])[0]
        results.append(Segmentation(str(path), mask.cpu().numpy().astype(dtype)))
    return results


def mask_image(mask: np.ndarray, spec: SegmenterSpec) -> Image.Image:
    """The raw mask as a PNG-ready image: a palette image whose pixel values are the class numbers (VOC's format;
    viewers show the spec's colours), or 16-bit greyscale past 256 classes."""
    if spec.num_classes > 256:
        return Image.fromarray(mask.astype(np.uint16))
    image = Image.fromarray(mask.astype(np.uint8), mode="P")
    palette = [v for colour in spec.colours() for v in colour]
    image.putpalette(palette + [0] * (768 - len(palette)))
    return image


def overlay(image: Image.Image, mask: np.ndarray, spec: SegmenterSpec, alpha: float = 0.5) -> Image.Image:
    """``image`` with each predicted class painted in its colour at ``alpha`` (torchvision's
    ``draw_segmentation_masks``); classes coloured black (VOC's background) are left unpainted."""
    from torchvision.transforms.v2.functional import pil_to_tensor, to_pil_image
    from torchvision.utils import draw_segmentation_masks

    colours = spec.colours()
    labels = torch.from_numpy(mask.astype(np.int64))
    shown = [c for c in torch.unique(labels).tolist() if any(colours[c])]
    if not shown:
        return image.copy()
    masks = labels[None] == torch.tensor(shown)[:, None, None]
    drawn = draw_segmentation_masks(pil_to_tensor(image), masks, alpha=alpha, colors=[tuple(colours[c]) for c in shown])
    return to_pil_image(drawn)


def write_predictions(results: Sequence[Segmentation], spec: SegmenterSpec, out_dir: str | os.PathLike) -> list[Path]:
    """For each readable image: ``<out>/<stem>_mask.png`` (the raw class numbers, ``mask_image``) and
    ``<out>/<stem>_overlay.jpg`` (``.png`` for non-JPEG inputs). Returns the written files."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    stems: dict[str, int] = {}
    for result in results:
        if not result.ok:
            continue
        source = Path(result.path)
        stems[source.stem] = stems.get(source.stem, 0) + 1
        stem = source.stem if stems[source.stem] == 1 else f"{source.stem}_{stems[source.stem]}"  # same name twice
        suffix = ".jpg" if source.suffix.lower() in (".jpg", ".jpeg") else ".png"
        mask_path, overlay_path = out / f"{stem}_mask.png", out / f"{stem}_overlay{suffix}"
        mask_image(result.mask, spec).save(mask_path)
        overlay(load_image(source), result.mask, spec).save(overlay_path)
        written += [mask_path, overlay_path]
    return written
