"""Segmentation metrics from one confusion matrix: mIoU, per-class IoU, pixel accuracy, mean class accuracy.

``counts[t, p]`` is the number of pixels of true class ``t`` predicted as ``p``; pixels labelled ``ignore_index``
are left out. Everything else follows from it:

- IoU of class c = TP / (TP + FP + FN) = counts[c, c] / (row c + column c - counts[c, c]). A class that is in
  neither the truth nor the predictions has 0 / 0: its IoU is NaN and it is left out of the mean (mIoU = the mean
  over the classes that occur). A class only predicted, never true, has IoU 0 and counts.
- pixel accuracy = trace / total; class accuracy of c = counts[c, c] / row c (NaN for a class never true), and
  mean class accuracy = their mean over the classes that occur in the truth.

The counts are sums, so shards of a data set (DataLoader workers, DDP ranks, batches) add up: ``all_reduce`` sums
the matrices of all ranks (torchvision's segmentation reference does the same with its ``ConfusionMatrix``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import UserError


@dataclass
class SegmentationMetrics:
    """Fractions in [0, 1] (NaN where undefined, see the module docstring). ``score`` is the mIoU, the number a
    training run selects its best checkpoint by."""

    miou: float
    iou: list[float]
    pixel_accuracy: float
    mean_class_accuracy: float
    class_accuracy: list[float]
    pixels: int

    @property
    def score(self) -> float:
        return self.miou

    def table(self, class_names: list[str] | None = None) -> str:
        """mIoU and pixel accuracy, then one line per class: IoU and accuracy in %."""
        names = class_names or [f"class {i}" for i in range(len(self.iou))]
        width = max(10, *(len(n) for n in names))
        lines = [f"mIoU {100 * self.miou:.2f}  pixel acc {100 * self.pixel_accuracy:.2f}  mean class acc "
                 f"{100 * self.mean_class_accuracy:.2f}  ({self.pixels:,} pixels)",
                 f"{'class':{width}s} {'IoU':>7s} {'acc':>7s}"]
        for name, iou, acc in zip(names, self.iou, self.class_accuracy, strict=True):
            cells = ["     - " if math.isnan(v) else f"{100 * v:7.2f}" for v in (iou, acc)]
            lines.append(f"{name:{width}s} {cells[0]} {cells[1]}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"miou": self.miou, "pixel_accuracy": self.pixel_accuracy,
                "mean_class_accuracy": self.mean_class_accuracy, "iou": self.iou,
                "class_accuracy": self.class_accuracy, "pixels": self.pixels}


class ConfusionMatrix:
    """Pixel counts ``counts[true, predicted]`` (int64, ``num_classes`` squared) accumulated over batches."""

    def __init__(self, num_classes: int, ignore_index: int = 255, device: str | torch.device = "cpu"):
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.counts = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    @torch.no_grad()
    def update(self, predicted: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch: ``predicted`` class numbers (argmax of the logits) and ``target`` labels, same shape."""
        if predicted.shape != target.shape:
            raise ValueError(f"predictions {tuple(predicted.shape)} and targets {tuple(target.shape)} differ in shape")
        k = self.num_classes
        keep = target != self.ignore_index
        target, predicted = target[keep].long(), predicted[keep].long()
        if target.numel() and (int(target.min()) < 0 or int(target.max()) >= k):
            raise UserError(f"target labels must be 0..{k - 1} or {self.ignore_index} (ignored), got "
                            f"{int(target.min())}..{int(target.max())}")
        if predicted.numel() and (int(predicted.min()) < 0 or int(predicted.max()) >= k):
            raise ValueError(f"predicted classes must be 0..{k - 1}, got "
                             f"{int(predicted.min())}..{int(predicted.max())}")
        self.counts += torch.bincount(target * k + predicted, minlength=k * k).reshape(k, k).to(self.counts.device)

    def all_reduce(self) -> ConfusionMatrix:
        """Sum the counts of every rank (a no-op outside ``torch.distributed``); returns self."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(self.counts, op=torch.distributed.ReduceOp.SUM)
        return self

    def compute(self) -> SegmentationMetrics:
        counts = self.counts.double().cpu()
        tp = counts.diagonal()
        true, predicted = counts.sum(1), counts.sum(0)
        union = true + predicted - tp
        iou = tp / union  # 0 / 0 = NaN: the class is in neither the truth nor the predictions
        class_accuracy = tp / true  # NaN: never true
        total = float(counts.sum())
        return SegmentationMetrics(
            miou=float(iou.nanmean()) if union.any() else math.nan,
            iou=iou.tolist(),
            pixel_accuracy=float(tp.sum()) / total if total else math.nan,
            mean_class_accuracy=float(class_accuracy.nanmean()) if true.any() else math.nan,
            class_accuracy=class_accuracy.tolist(),
            pixels=int(total),
        )
