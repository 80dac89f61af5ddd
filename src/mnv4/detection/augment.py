"""Training augmentation for detection with torchvision's v2 transforms, which move the boxes with the pixels.

- ``"paper"`` (MobileNetV4 paper §7.2): random horizontal flip, random scale (large-scale jitter: resize so the
  image fits ``size`` x ``size`` times a random factor, then a random ``size`` crop, zero-padded), RandAugment
  without Shear and Rotate (``BoxRandAugment``).
- ``"ssd"``: torchvision's SSDLite recipe (photometric distortion, zoom out, IoU crop, flip), resized to ``size``.
- ``"none"``: resize only (for tests and fine-tuning sanity checks).

Every pipeline ends with ``SanitizeBoundingBoxes`` (boxes that a crop left empty or under 1 px are removed with
their labels: an augmentation effect, not a data problem) and returns a float image in [0, 1] of exactly
``size`` x ``size``: the detector normalises it itself.
"""

from __future__ import annotations

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from ..transforms import randaugment_magnitude

AUGMENTATIONS = ("paper", "ssd", "none")


class BoxRandAugment(v2.RandAugment):
    """RandAugment for detection: torchvision's ops and magnitudes minus ShearX/ShearY/Rotate (paper §7.2), with
    TranslateX/Y applied to the image and its boxes together (torchvision's RandAugment rejects boxes).

    ``num_ops`` ops per image, each applied with probability ``prob``; ``magnitude`` on TF's 0..10 scale (as the
    classification recipes, ``mnv4.transforms.randaugment_magnitude``).
    """

    _AUGMENTATION_SPACE = {
        k: v for k, v in v2.RandAugment._AUGMENTATION_SPACE.items() if k not in ("ShearX", "ShearY", "Rotate")
    }

    def __init__(self, num_ops: int = 2, magnitude: float = 9.0, prob: float = 1.0, fill: int = 0):
        super().__init__(num_ops=num_ops, magnitude=randaugment_magnitude(magnitude), num_magnitude_bins=11, fill=fill)
        self.prob = prob
        self.pixel_fill = fill  # for the translations, which run outside torchvision's per-type fill dispatch

    def forward(self, *inputs):
        image, target = inputs if len(inputs) == 2 else (inputs[0], None)
        height, width = F.get_size(image)
        for _ in range(self.num_ops):
            if self.prob < 1.0 and float(torch.rand(())) >= self.prob:
                continue
            name, (magnitudes_fn, signed) = self._get_random_item(self._AUGMENTATION_SPACE)
            magnitudes = magnitudes_fn(self.num_magnitude_bins, height, width)
            magnitude = float(magnitudes[self.magnitude]) if magnitudes is not None else 0.0
            if signed and torch.rand(()) <= 0.5:
                magnitude *= -1
            if name in ("TranslateX", "TranslateY"):
                shift = [int(magnitude), 0] if name == "TranslateX" else [0, int(magnitude)]
                image, target = _translate(image, target, shift, self.pixel_fill)
            else:
                image = self._apply_image_or_video_transform(image, name, magnitude, self.interpolation, self._fill)
        return (image, target) if target is not None else image


def _translate(image, target, shift: list[int], fill):
    affine = dict(angle=0.0, translate=shift, scale=1.0, shear=[0.0, 0.0])
    image = F.affine(image, **affine, fill=fill)
    if target is not None:
        target = dict(target)
        target["boxes"] = F.affine(target["boxes"], **affine)
    return image, target


def train_transform(
    size: int,
    augment: str = "paper",
    hflip: bool = True,
    scale_range: tuple[float, float] = (0.5, 2.0),
    randaug_layers: int = 2,
    randaug_magnitude: float = 9.0,
    randaug_prob: float = 1.0,
) -> v2.Compose:
    """(PIL image, {"boxes": BoundingBoxes, "labels"}) -> (float image size x size, target)."""
    if augment not in AUGMENTATIONS:
        raise ValueError(f"augment must be one of {AUGMENTATIONS}, got {augment!r}")
    ops: list = [v2.ToImage()]
    if augment == "paper":
        ops += [
            v2.ScaleJitter((size, size), scale_range=scale_range, antialias=True),
            v2.RandomCrop(size, pad_if_needed=True, fill=0),
        ]
        if hflip:
            ops.append(v2.RandomHorizontalFlip())
        if randaug_layers:
            ops.append(BoxRandAugment(randaug_layers, randaug_magnitude, randaug_prob))
    elif augment == "ssd":
        ops += [v2.RandomPhotometricDistort(p=1.0), v2.RandomZoomOut(fill={tv_tensors.Image: (123, 117, 104),
                                                                           "others": 0}), v2.RandomIoUCrop()]
        if hflip:
            ops.append(v2.RandomHorizontalFlip())
        ops.append(v2.Resize((size, size), antialias=True))
    else:
        ops.append(v2.Resize((size, size), antialias=True))
    ops += [v2.ClampBoundingBoxes(), v2.SanitizeBoundingBoxes(), v2.ToDtype(torch.float32, scale=True)]
    return v2.Compose(ops)


def eval_transform() -> v2.Compose:
    """Evaluation / prediction: the image as is (float, [0, 1]); the detector resizes it and maps boxes back."""
    return v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])
