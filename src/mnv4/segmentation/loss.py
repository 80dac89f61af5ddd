"""The training loss of a segmenter: pixel-wise cross-entropy over the labelled pixels, plus the auxiliary head's.

torchvision's segmentation reference: ``F.cross_entropy(out, target, ignore_index=255)`` + 0.5 x the same on
``"aux"`` (DeepLabV3 with ``aux``), each averaged over the pixels that are not ignored.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

AUX_WEIGHT = 0.5  # torchvision's segmentation reference


def segmentation_loss(
    outputs: dict[str, torch.Tensor], target: torch.Tensor, ignore_index: int = 255, aux_weight: float = AUX_WEIGHT
) -> torch.Tensor:
    """Cross-entropy of ``outputs["out"]`` (B, K, H, W logits at the target's size) against ``target`` (B, H, W
    int64 labels), plus ``aux_weight`` times that of ``outputs["aux"]`` when the model has an auxiliary head.

    A batch whose pixels are all ``ignore_index`` (a crop that fell on padding and boundaries only) gives a zero loss
    that still reaches every logit, instead of cross-entropy's 0 / 0 = NaN."""
    target = target.long()
    if not bool((target != ignore_index).any()):
        return sum(logits.sum() * 0.0 for logits in outputs.values())
    loss = F.cross_entropy(outputs["out"], target, ignore_index=ignore_index)
    if "aux" in outputs:
        loss = loss + aux_weight * F.cross_entropy(outputs["aux"], target, ignore_index=ignore_index)
    return loss
