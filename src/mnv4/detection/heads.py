"""The depthwise-separable FPN and RetinaNet head of the MobileNetV4 paper's detector (paper §7.2, Tab. 7).

The paper: "RetinaNet ... 256-d FPN on P3-P7 and a 256-d head with 4 conv layers, both using depthwise-separable
convs". The layout follows TensorFlow Model Garden's RetinaNet with ``use_separable_conv`` (the code the paper's
detectors come from), built from torchvision's parts so that anchors, matching, losses and post-processing stay
torchvision's:

- FPN: torchvision's ``FeaturePyramidNetwork`` (1x1 laterals, nearest top-down sum) whose 3x3 output convs are
  separable (3x3 depthwise -> 1x1) followed by BatchNorm; P6 = separable 3x3 stride 2 on P5, P7 = the same on
  ReLU(P6), each with BatchNorm (Model Garden's "coarser levels"). No activation on the pyramid outputs.
- Head: four separable 3x3 convs per branch (classification, box regression), **shared across levels with a
  BatchNorm per level** (Model Garden's ``classnet-conv-norm_<level>_<i>``) + ReLU, then a separable 3x3 predictor.
  torchvision's own head shares the BatchNorm/GroupNorm too and uses full 3x3 convs.
- Initialisation: variance-preserving uniform convs (torchvision's FPN init, ``kaiming_uniform_(a=1)``), also for
  the depthwise ones, so activations keep unit scale through the towers and the BatchNorm running statistics start
  near their values. torchvision's N(0, 0.01) head init is meant for norm-free heads: behind BatchNorm it leaves the
  running variance to crawl from 1 down to ~1e-5, and a short run evaluates as if untrained. The predictors' 1x1
  weights alone start at N(0, 0.01) so the first scores sit at the focal-loss prior (RetinaNet paper).
  BatchNorm eps 1e-3 (Model Garden) and momentum 0.03 (torchvision's SSDLite; Keras' 0.99 = 0.01 here lags too long
  for fine-tuning runs of a few hundred steps).
"""

from __future__ import annotations

import math
from functools import partial

import torch
from torch import nn
from torchvision.models.detection._utils import BoxCoder, Matcher
from torchvision.models.detection.retinanet import (
    RetinaNetClassificationHead,
    RetinaNetHead,
    RetinaNetRegressionHead,
)
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock, FeaturePyramidNetwork

from ..layers import conv2d

HeadNorm = partial(nn.BatchNorm2d, eps=1e-3, momentum=0.03)
PRIOR_PROBABILITY = 0.01  # focal-loss prior: the classifier bias starts at -log((1 - p) / p)


class SeparableConv2d(nn.Sequential):
    """k x k depthwise (no bias) -> 1x1 pointwise (with bias when nothing follows it): Keras' ``SeparableConv2D``."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1, bias: bool = True):
        super().__init__()
        self.depthwise = conv2d(in_ch, in_ch, kernel, stride, groups=in_ch)
        self.pointwise = nn.Conv2d(in_ch, out_ch, 1, bias=bias)
        for conv in (self.depthwise, self.pointwise):
            nn.init.kaiming_uniform_(conv.weight, a=1)  # Var(w) = 1 / fan_in: unit gain
        if bias:
            nn.init.zeros_(self.pointwise.bias)


def separable_fpn(in_channels: list[int], out_channels: int = 256) -> FeaturePyramidNetwork:
    """torchvision's FPN with separable 3x3 output convs + BatchNorm, and separable P6/P7 (``SeparableP6P7``)."""
    fpn = FeaturePyramidNetwork(in_channels, out_channels, extra_blocks=SeparableP6P7(out_channels))
    for i in range(len(fpn.layer_blocks)):
        fpn.layer_blocks[i] = nn.Sequential(
            SeparableConv2d(out_channels, out_channels, bias=False), HeadNorm(out_channels)
        )
    return fpn


class SeparableP6P7(ExtraFPNBlock):
    """P6 = BN(separable 3x3 s2 (P5)), P7 = BN(separable 3x3 s2 (ReLU(P6))): the RetinaNet levels past the
    backbone's /32, depthwise-separable (torchvision's ``LastLevelP6P7`` uses full 3x3 convs and no norm)."""

    def __init__(self, channels: int):
        super().__init__()
        self.p6 = nn.Sequential(SeparableConv2d(channels, channels, stride=2, bias=False), HeadNorm(channels))
        self.p7 = nn.Sequential(SeparableConv2d(channels, channels, stride=2, bias=False), HeadNorm(channels))

    def forward(self, results: list[torch.Tensor], x: list[torch.Tensor], names: list[str]):
        p6 = self.p6(results[-1])
        p7 = self.p7(torch.relu(p6))
        return [*results, p6, p7], [*names, "p6", "p7"]


class _SeparableTower(nn.Module):
    """``num_convs`` separable convs shared by all levels, a BatchNorm per (level, conv), ReLU, then the predictor."""

    def __init__(self, channels: int, num_levels: int, num_convs: int, out_ch: int):
        super().__init__()
        self.convs = nn.ModuleList(SeparableConv2d(channels, channels, bias=False) for _ in range(num_convs))
        self.norms = nn.ModuleList(
            nn.ModuleList(HeadNorm(channels) for _ in range(num_convs)) for _ in range(num_levels)
        )
        self.predictor = SeparableConv2d(channels, out_ch)
        nn.init.normal_(self.predictor.pointwise.weight, std=0.01)

    def forward(self, features: list[torch.Tensor], per_anchor: int) -> torch.Tensor:
        if len(features) != len(self.norms):
            raise ValueError(f"the head was built for {len(self.norms)} levels, got {len(features)} feature maps")
        outputs = []
        for x, norms in zip(features, self.norms, strict=True):
            for conv, norm in zip(self.convs, norms, strict=True):
                x = torch.relu(norm(conv(x)))
            x = self.predictor(x)
            # (N, A*K, H, W) -> (N, H*W*A, K): torchvision's layout, which its losses and post-processing read
            n, _, h, w = x.shape
            outputs.append(x.view(n, -1, per_anchor, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, per_anchor))
        return torch.cat(outputs, dim=1)


class SeparableClassificationHead(RetinaNetClassificationHead):
    """torchvision's RetinaNet classification head (focal loss in ``compute_loss``) with the separable tower."""

    def __init__(self, channels: int, num_anchors: int, num_classes: int, num_levels: int = 5, num_convs: int = 4):
        nn.Module.__init__(self)  # torchvision's __init__ would build its full-conv tower only to discard it
        self.tower = _SeparableTower(channels, num_levels, num_convs, num_anchors * num_classes)
        nn.init.constant_(self.tower.predictor.pointwise.bias, -math.log((1 - PRIOR_PROBABILITY) / PRIOR_PROBABILITY))
        self.num_classes = num_classes
        self.num_anchors = num_anchors
        self.BETWEEN_THRESHOLDS = Matcher.BETWEEN_THRESHOLDS  # read by compute_loss

    def forward(self, x: list[torch.Tensor]) -> torch.Tensor:
        return self.tower(x, self.num_classes)


class SeparableRegressionHead(RetinaNetRegressionHead):
    """torchvision's RetinaNet box-regression head (its BoxCoder and L1 loss) with the separable tower."""

    def __init__(self, channels: int, num_anchors: int, num_levels: int = 5, num_convs: int = 4):
        nn.Module.__init__(self)
        self.tower = _SeparableTower(channels, num_levels, num_convs, num_anchors * 4)
        self.box_coder = BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))
        self._loss_type = "l1"

    def forward(self, x: list[torch.Tensor]) -> torch.Tensor:
        return self.tower(x, 4)


class SeparableRetinaNetHead(RetinaNetHead):
    """Drop-in for torchvision's ``RetinaNetHead`` (its forward and ``compute_loss``), depthwise-separable."""

    def __init__(self, channels: int, num_anchors: int, num_classes: int, num_levels: int = 5, num_convs: int = 4):
        nn.Module.__init__(self)
        self.classification_head = SeparableClassificationHead(
            channels, num_anchors, num_classes, num_levels, num_convs
        )
        self.regression_head = SeparableRegressionHead(channels, num_anchors, num_levels, num_convs)
