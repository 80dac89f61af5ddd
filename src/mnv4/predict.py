"""Prediction as a library function: image files -> top-k labels and probabilities.

One unreadable file does not stop the others: its result carries the error instead of predictions.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources

import torch
from torch import nn

from .transforms import DataConfig, data_config, eval_transform, load_image

IMAGENET_CLASSES_FILE = "imagenet_classes.txt"


@functools.cache
def imagenet_classes() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names in the standard index order (package data, never fetched)."""
    text = resources.files("mnv4").joinpath(IMAGENET_CLASSES_FILE).read_text(encoding="utf-8")
    names = tuple(line for line in text.splitlines() if line)
    if len(names) != 1000:
        raise RuntimeError(f"the packaged {IMAGENET_CLASSES_FILE} has {len(names)} names, expected 1000")
    return names


def class_names(model: nn.Module) -> tuple[str, ...] | None:
    """Names of the model's outputs: ImageNet-1k names for a 1000-class head, None (indices only) otherwise, e.g.
    for the ImageNet-12k tags (11821 classes: timm publishes no names with them)."""
    return imagenet_classes() if getattr(model, "num_classes", 0) == 1000 else None


@dataclass
class Prediction:
    """Top-k of one image: ``indices``/``probs``/``labels`` best first; ``error`` set (and the rest empty) when the
    file could not be read."""

    path: str
    indices: list[int] = field(default_factory=list)
    probs: list[float] = field(default_factory=list)
    labels: list[str] | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@torch.inference_mode()
def predict(
    model: nn.Module,
    images: Sequence[str | os.PathLike],
    topk: int = 5,
    cfg: DataConfig | None = None,
    device: str | torch.device = "cpu",
    labels: Sequence[str] | None = None,
    batch_size: int = 16,
) -> list[Prediction]:
    """Classify image files with ``model`` (put in eval mode), preprocessed with ``cfg`` (default: the model's
    ``data_config``). ``labels``: names of the outputs (default: ``class_names(model)``). One result per file, in
    order; unreadable files get ``error`` and do not stop the others."""
    num_classes = getattr(model, "num_classes", 0)
    if not num_classes:
        raise ValueError("the model has no classifier (num_classes=0 or features_only); prediction needs one")
    if not isinstance(topk, int) or topk < 1:
        raise ValueError(f"topk must be a positive int, got {topk!r}")
    labels = list(labels) if labels is not None else class_names(model)
    if labels is not None and len(labels) != num_classes:
        raise ValueError(f"{len(labels)} label names for a {num_classes}-class model")
    k = min(topk, num_classes)
    transform = eval_transform(cfg or data_config(model))
    model = model.eval().to(device)
    results = [Prediction(str(p)) for p in images]
    pending: list[tuple[Prediction, torch.Tensor]] = []

    def flush():
        if not pending:
            return
        batch = torch.stack([x for _, x in pending]).to(device)
        probs = model(batch).float().softmax(dim=-1)
        top_p, top_i = probs.topk(k, dim=-1)
        for (res, _), p, i in zip(pending, top_p.tolist(), top_i.tolist(), strict=True):
            res.indices, res.probs = i, p
            res.labels = [labels[j] for j in i] if labels is not None else None
        pending.clear()

    for res in results:
        try:
            pending.append((res, transform(load_image(res.path))))
        except (ValueError, FileNotFoundError) as err:
            res.error = str(err)
        if len(pending) >= batch_size:
            flush()
    flush()
    return results
