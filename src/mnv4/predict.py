"""Prediction as a library function: image files -> top-k labels and probabilities.

One bad file does not stop the others: a file that cannot be decoded (``mnv4.images.DecodeError``: missing, corrupt,
not an image, over the decompression-bomb limit), or one whose logits come out NaN/inf, gets an ``error`` instead of
predictions.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from .errors import UserError
from .imagenet import NUM_IMAGENET_CLASSES, imagenet_classes
from .images import DecodeError, load_image
from .transforms import DataConfig, data_config, eval_transform


def class_names(model: nn.Module) -> tuple[str, ...] | None:
    """Names of the model's outputs: ImageNet-1k names for a 1000-class head, None (indices only) otherwise, e.g.
    for the ImageNet-12k tags (11821 classes: timm publishes no names with them)."""
    return imagenet_classes() if getattr(model, "num_classes", 0) == NUM_IMAGENET_CLASSES else None


@dataclass
class Prediction:
    """Top-k of one image: ``indices``/``probs``/``labels`` best first; ``error`` set (and the rest empty) when the
    file could not be used."""

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
    order; bad files get ``error`` and do not stop the others."""
    num_classes = getattr(model, "num_classes", 0)
    if not num_classes:
        raise UserError("the model has no classifier (num_classes=0 or features_only); prediction needs one")
    if not isinstance(topk, int) or topk < 1:
        raise UserError(f"topk must be a positive int, got {topk!r}")
    labels = list(labels) if labels is not None else class_names(model)
    if labels is not None and len(labels) != num_classes:
        raise UserError(f"{len(labels)} label names for a {num_classes}-class model")
    k = min(topk, num_classes)
    transform = eval_transform(cfg or data_config(model))
    model = model.eval().to(device)
    results = [Prediction(str(p)) for p in images]
    pending: list[tuple[Prediction, torch.Tensor]] = []

    def flush():
        if not pending:
            return
        batch = torch.stack([x for _, x in pending]).to(device)
        logits = model(batch).float()
        finite = torch.isfinite(logits).all(dim=-1).tolist()
        top_p, top_i = logits.softmax(dim=-1).topk(k, dim=-1)
        for (res, _), ok, p, i in zip(pending, finite, top_p.tolist(), top_i.tolist(), strict=True):
            if not ok:
                res.error = f"{res.path}: the model's logits are NaN/inf for this image (broken weights?)"
                continue
            res.indices, res.probs = i, p
            res.labels = [labels[j] for j in i] if labels is not None else None
        pending.clear()

    for res in results:
        try:
            pending.append((res, transform(load_image(res.path))))
        except DecodeError as err:
            res.error = str(err)
        if len(pending) >= batch_size:
            flush()
    flush()
    return results
