"""MobileNetV4 as a torchvision detection backbone: a module that returns an ``OrderedDict`` of feature maps and
carries ``out_channels``, the two things torchvision's detectors read from a backbone.

Two ways to get the maps, same keys, same values:

- ``extractor="features_only"`` (default): ``mnv4.create_model(name, features_only=True, out_indices=...)``, whose
  list of maps is keyed ``"0"``, ``"1"``, ... in level order (torchvision's names for backbone levels);
- ``extractor="fx"``: torchvision's ``create_feature_extractor`` on the whole classifier, with the stage modules of
  ``model.feature_info`` as return nodes (torch.fx symbolic tracing of the model).

``fpn=True`` puts torchvision's ``FeaturePyramidNetwork`` on top (``BackboneWithFPN``'s layout: ``body`` then
``fpn``), with torchvision's extra levels (``"p6p7"``: ``LastLevelP6P7``; ``"pool"``: ``LastLevelMaxPool``) or, with
``separable=True``, the depthwise-separable FPN and P6/P7 of the MobileNetV4 paper's RetinaNet (``heads.py``).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from ..errors import UserError
from ..factory import create_model
from ..model import MobileNetV4

EXTRACTORS = ("features_only", "fx")
EXTRA_LEVELS = ("p6p7", "pool", "none")


class FrozenBatchNormAct2d(FrozenBatchNorm2d):
    """torchvision's ``FrozenBatchNorm2d`` (fixed statistics and affine, buffers only) that keeps the activation of
    mnv4's ``BatchNormAct2d``; same state-dict keys as a BatchNorm2d (``num_batches_tracked`` is ignored)."""

    def __init__(self, num_features: int, eps: float = 1e-5, act: nn.Module | None = None):
        super().__init__(num_features, eps=eps)
        self.act = act if act is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(super().forward(x))


def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d under ``module`` (mnv4's ``BatchNormAct2d`` included) by ``FrozenBatchNormAct2d``
    holding its current statistics and affine parameters; returns ``module`` (changed in place, or the new module
    when ``module`` itself is a BatchNorm)."""
    if isinstance(module, nn.BatchNorm2d):
        frozen = FrozenBatchNormAct2d(module.num_features, module.eps, getattr(module, "act", None))
        with torch.no_grad():
            if module.affine:
                frozen.weight.copy_(module.weight)
                frozen.bias.copy_(module.bias)
            if module.track_running_stats:
                frozen.running_mean.copy_(module.running_mean)
                frozen.running_var.copy_(module.running_var)
        return frozen.to(module.running_mean.device if module.running_mean is not None else "cpu")
    for name, child in module.named_children():
        module.add_module(name, freeze_batchnorm(child))
    return module


def stage_names(model: MobileNetV4) -> list[str]:
    """The backbone's stages in forward order: ``"stem"`` (conv_stem + bn1), then ``"blocks.0"`` ... ``"blocks.N"``."""
    return ["stem"] + [f"blocks.{i}" for i in range(len(model.blocks))]


def freeze_stages(model: MobileNetV4, trainable_stages: int) -> None:
    """torchvision's ``trainable_layers``: only the last ``trainable_stages`` stages train. The earlier ones get
    ``requires_grad=False`` and frozen BatchNorm (a frozen stage in train mode would otherwise keep updating its
    running statistics while its weights stay fixed)."""
    names = stage_names(model)
    if not 0 <= trainable_stages <= len(names):
        raise UserError(f"trainable_stages must be in [0, {len(names)}] ({', '.join(names)}), got {trainable_stages}")
    for name in names[: len(names) - trainable_stages]:
        parts = [model.conv_stem, model.bn1] if name == "stem" else [model.get_submodule(name)]
        for part in parts:
            for p in part.parameters():
                p.requires_grad_(False)
        if name == "stem":
            model.bn1 = freeze_batchnorm(model.bn1)
        else:
            freeze_batchnorm(model.get_submodule(name))


def check_out_indices(indices: Sequence[int], num_levels: int) -> list[int]:
    """``indices`` as non-negative level numbers, checked: ints in range, increasing (fine to coarse), no repeats."""
    n = num_levels
    if not indices or not all(isinstance(i, int) and -n <= i < n for i in indices):
        raise UserError(f"out_indices must be ints in [-{n}, {n - 1}] (the {n} levels), got {list(indices)}")
    resolved = [i % n for i in indices]
    if resolved != sorted(set(resolved)):
        raise UserError(f"out_indices must be increasing without repeats (fine to coarse), got {list(indices)}")
    return resolved


class MobileNetV4Backbone(nn.Module):
    """A MobileNetV4 returning ``OrderedDict("0": map, "1": map, ...)`` for the requested levels, fine to coarse.

    Attributes: ``body`` (the MobileNetV4, or the FX ``GraphModule`` with ``extractor="fx"``), ``channels`` (per
    returned level), ``reductions`` (strides), and ``out_channels``: an int when one level is returned (torchvision's
    single-map backbones, e.g. ``FasterRCNN`` without FPN), else the list ``channels`` (what torchvision's SSD reads
    through ``retrieve_out_channels``). Under an FPN every level has the FPN's width instead.
    """

    def __init__(self, body: nn.Module, channels: list[int], reductions: list[int], fx: bool):
        super().__init__()
        self.body = body
        self.channels = channels
        self.reductions = reductions
        self.out_channels: int | list[int] = channels[0] if len(channels) == 1 else list(channels)
        self._fx = fx

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        if self._fx:
            return OrderedDict(self.body(x))  # the GraphModule already returns the dict in return-node order
        return OrderedDict((str(i), f) for i, f in enumerate(self.body(x)))


def fx_feature_extractor(model: MobileNetV4, indices: Sequence[int]) -> nn.Module:
    """torchvision's ``create_feature_extractor`` on a classifier MobileNetV4: the stage modules of the requested
    levels (``model.feature_info``) as return nodes, named ``"0"``, ``"1"``, ..."""
    from torchvision.models.feature_extraction import create_feature_extractor

    nodes = {model.feature_info[i].module: str(k) for k, i in enumerate(indices)}
    return create_feature_extractor(model, return_nodes=nodes)


def mobilenetv4_backbone(
    name: str | os.PathLike = "mobilenetv4_conv_medium",
    pretrained: bool | str | os.PathLike = False,
    out_indices: Sequence[int] = (2, 3, 4),
    frozen_bn: bool = False,
    trainable_stages: int | None = None,
    drop_path_rate: float = 0.0,
    extractor: str = "features_only",
) -> MobileNetV4Backbone:
    """The backbone body: feature maps of ``out_indices`` (levels 0-4 = strides 2, 4, 8, 16, 32) as an OrderedDict.

    ``name``/``pretrained`` go to ``mnv4.create_model``: any variant or ``variant.tag``; ``pretrained=True`` loads the
    tag's ImageNet weights (hub cache), a path loads a local file (the classifier head is dropped). ``frozen_bn``:
    every BatchNorm becomes ``FrozenBatchNormAct2d`` (torchvision's default for fine-tuning detectors with small
    batches). ``trainable_stages``: None = all train; n = only the last n of stem, blocks.0, ..., blocks.4.
    ``drop_path_rate``: stochastic depth in the backbone (the paper's detectors use 0.2).
    """
    if extractor not in EXTRACTORS:
        raise UserError(f"extractor must be one of {EXTRACTORS}, got {extractor!r}")
    fx = extractor == "fx"
    if not list(out_indices) or not all(isinstance(i, int) for i in out_indices):
        raise UserError(f"out_indices must be a non-empty sequence of level numbers (0-4), got {out_indices!r}")
    # Both ways build the same model layout (timm's key names), so any weights file loads the same way.
    if fx:
        model = create_model(name, pretrained=pretrained, drop_path_rate=drop_path_rate)
        indices = check_out_indices(list(out_indices), len(model.feature_info))
        levels = [model.feature_info[i] for i in indices]
    else:
        model = create_model(
            name, pretrained=pretrained, drop_path_rate=drop_path_rate, features_only=True,
            out_indices=tuple(out_indices),
        )
        check_out_indices(list(model.out_indices), max(model.out_indices) + 1)
        levels = list(model.feature_info)
    if trainable_stages is not None:
        freeze_stages(model, trainable_stages)
    if frozen_bn:
        freeze_batchnorm(model)
    body = fx_feature_extractor(model, indices) if fx else model
    return MobileNetV4Backbone(body, [f.num_chs for f in levels], [f.reduction for f in levels], fx)
