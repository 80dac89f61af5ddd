"""Segmentation metrics of a segmenter on a data set: a confusion matrix over every labelled pixel
(``metrics.ConfusionMatrix``), at each image's own resolution.

Protocol (``predict.class_maps``): each image resized so its shorter side is the spec's ``image_size`` (``resize``;
else as it is), normalised, the logits upsampled bilinearly to the image's size, argmax, and scored against the
untouched mask; ``ignore_index`` pixels are not scored. torchvision's segmentation reference instead resizes the mask
too (nearest) and scores at the resized size; DeepLab's evaluation scores at the original size, as here. Images of
one size run as one batch; images of different sizes are never padded together (padding would change the
prediction: the pooled branches of LR-ASPP and ASPP see the whole map).
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import UserError
from .data import CocoMasks, EvalTransform, MaskFolder, SegmentationDataset, collate_segmentation
from .metrics import ConfusionMatrix, SegmentationMetrics
from .models import SegmenterSpec
from .predict import class_maps


@torch.no_grad()
def confusion_over(model: nn.Module, loader, num_classes: int, ignore_index: int = 255,
                   device: str | torch.device = "cpu", bad_log=None) -> ConfusionMatrix:
    """The confusion matrix of ``model`` (put in eval mode) over a loader of ``collate_segmentation`` batches of
    evaluation samples (``EvalTransform``: images resized, masks at their own size). Not reduced across ranks.

    An image that cannot be decoded is never scored: without ``bad_log`` it is a ``UserError`` naming the file
    (``mnv4 segment eval``); with one (training's validation, a ``BadFileLog``) it is logged and counted there and
    the metrics are over the other images."""
    model.eval()
    matrix = ConfusionMatrix(num_classes, ignore_index, device)
    for images, masks, _, bad in loader:
        (bad_log or _fail_on_bad_file)(bad)
        images, masks = list(images), list(masks)
        start = 0
        while start < len(images):  # runs of equal-sized images, one forward each
            end = start + 1
            while end < len(images) and images[end].shape == images[start].shape:
                end += 1
            batch = torch.stack(images[start:end]).to(device, non_blocking=True)
            targets = [m.to(device, non_blocking=True) for m in masks[start:end]]
            for predicted, target in zip(class_maps(model, batch, [t.shape for t in targets]), targets, strict=True):
                matrix.update(predicted, target)
            start = end
    return matrix


def _fail_on_bad_file(bad: list[tuple[str, str]]) -> None:
    if bad:
        path, reason = bad[0]
        raise UserError(f"cannot evaluate: {path} is not a readable image ({reason}); fix the file or leave it out of "
                        "the data (a split file)")


def evaluate_segmenter(
    model: nn.Module,
    data: MaskFolder | CocoMasks,
    spec: SegmenterSpec,
    device: str | torch.device = "cpu",
    batch_size: int = 8,
    workers: int = 0,
    resize: bool = True,
    world_size: int = 1,
    rank: int = 0,
    bad_log=None,
) -> SegmentationMetrics:
    """mIoU, per-class IoU and pixel accuracy of ``model`` on ``data`` (see the module docstring for the protocol).

    Under torchrun each rank scores its shard and the counts are summed over ranks, so every rank returns the
    metrics of the whole data set. An image that cannot be decoded is an error naming the file, or, with
    ``bad_log``, skipped and counted there (``confusion_over``)."""
    from ..engine.seeds import ShardSampler

    if (data.num_classes, data.ignore_index) != (spec.num_classes, spec.ignore_index):
        raise UserError(f"{data.source} has {data.num_classes} classes and ignore index {data.ignore_index}, the "
                        f"segmenter {spec.num_classes} and {spec.ignore_index}")
    device = torch.device(device)
    dataset = SegmentationDataset(data, EvalTransform(spec.image_size if resize else None, spec.mean, spec.std),
                                  replace_bad=False)
    sampler = ShardSampler(len(dataset), batch_size, world_size, rank)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=workers,
                                         collate_fn=collate_segmentation)
    matrix = confusion_over(model, loader, spec.num_classes, spec.ignore_index, device, bad_log)
    return matrix.all_reduce().compute()
