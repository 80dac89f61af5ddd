"""ImageNet-1k's 1000 classes in the standard index order: their WordNet ids (synsets, the folder names of the
ImageNet ImageFolder, ``n01440764`` ...) and readable names. Package data, never fetched.

The index order is the sorted order of the synsets, the order every ImageNet-1k classifier (timm's, torchvision's,
the released MobileNetV4 weights) is trained with.
"""

from __future__ import annotations

import functools
from importlib import resources

IMAGENET_CLASSES_FILE = "imagenet_classes.txt"
IMAGENET_SYNSETS_FILE = "imagenet_synsets.txt"  # from timm's data/_info/imagenet_synsets.txt
NUM_IMAGENET_CLASSES = 1000


def _packaged_lines(name: str) -> tuple[str, ...]:
    text = resources.files("mnv4").joinpath(name).read_text(encoding="utf-8")
    lines = tuple(line for line in text.splitlines() if line)
    if len(lines) != NUM_IMAGENET_CLASSES:  # a broken install, not bad input
        raise RuntimeError(f"the packaged {name} has {len(lines)} lines, expected {NUM_IMAGENET_CLASSES}")
    return lines


@functools.cache
def imagenet_classes() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names in the standard index order (``imagenet_classes()[281] == 'tabby'``)."""
    return _packaged_lines(IMAGENET_CLASSES_FILE)


@functools.cache
def imagenet_synsets() -> tuple[str, ...]:
    """The 1000 ImageNet-1k WordNet ids in the standard index order (``imagenet_synsets()[0] == 'n01440764'``)."""
    return _packaged_lines(IMAGENET_SYNSETS_FILE)


@functools.cache
def imagenet_synset_index() -> dict[str, int]:
    """``{wnid: class index}`` for the 1000 ImageNet-1k synsets."""
    return {wnid: i for i, wnid in enumerate(imagenet_synsets())}
