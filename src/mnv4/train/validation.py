"""Validation during training: top-1 / top-5 and mean cross-entropy over the images that could be scored.

The images come through the model's evaluation protocol (``mnv4.transforms.eval_transform``, the one ``mnv4 eval``
uses; see ``mnv4.train.inputs``), so a run's ``val_top1`` is the number ``mnv4 eval`` reports for the same weights.
A file that cannot be decoded is skipped, logged and counted — never scored as a copy of another image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..engine.device import autocast
from ..engine.distributed import all_reduce_sum
from .data import BadFileLog


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader,
    device: torch.device,
    precision: str = "fp32",
    channels_last: bool = False,
    bad_log: BadFileLog | None = None,
) -> dict:
    """Top-1 / top-5 accuracy (%) and mean cross-entropy over the scored images, their count (``scored``) and the
    count of undecodable files skipped (``skipped``); summed over ranks under DDP."""
    model.eval()
    totals = torch.zeros(5, dtype=torch.float64, device=device)  # correct1, correct5, loss_sum, scored, skipped
    for images, labels, _, _, bad in loader:
        if bad_log is not None:
            bad_log(bad)
        totals[4] += len(bad)
        if len(labels) == 0:  # every file of this batch was undecodable
            continue
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast(device, precision):
            logits = model(images).float()
        k = min(5, logits.shape[1])
        hit = logits.topk(k, dim=1).indices == labels[:, None]
        totals[:4] += torch.stack(
            [
                hit[:, 0].sum().double(),
                hit.any(1).sum().double(),
                F.cross_entropy(logits, labels, reduction="sum").double(),
                torch.tensor(float(len(labels)), device=device, dtype=torch.float64),
            ]
        )
    correct1, correct5, loss_sum, scored, skipped = all_reduce_sum(totals).tolist()
    n = max(scored, 1.0)
    return {
        "top1": 100 * correct1 / n,
        "top5": 100 * correct5 / n,
        "loss": loss_sum / n,
        "scored": int(scored),
        "skipped": int(skipped),
    }
