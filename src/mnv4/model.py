"""The MobileNetV4 network, built from a ``ModelSpec`` table (specs.py).

Layout and names follow timm's MobileNetV3/V4 class so its checkpoints load strictly:
``conv_stem``/``bn1`` (stem), ``blocks.<stage>.<block>`` (the table), then the head ``global_pool`` ->
``conv_head`` (1x1, no bias) -> ``norm_head`` (BN + act) -> flatten -> dropout -> ``classifier``.

Two widths, as in timm (and two timm issues, #2228 / #2290, from users who mixed them up):
- ``num_features`` = 960: channels of the unpooled map from ``forward_features``;
- ``head_hidden_size`` = 1280: width of the pooled vector from ``forward_head(x, pre_logits=True)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .blocks import ATTENTION_IMPLS, ConvBlock, FusedIB, MobileMQA, MultiQueryAttention2d, UniversalInvertedBottleneck
from .layers import BatchNormAct2d, conv2d, init_weights_goog, make_divisible
from .specs import MIN_INPUT_SIZE, MQA, UIB, Conv, ModelSpec, Row
from .specs import FusedIB as FusedIBRow


@dataclass(frozen=True)
class FeatureLevel:
    """One pyramid level: ``index`` is its position in ``forward_intermediates`` (0 = stem, i = after blocks[i-1])."""

    index: int
    module: str
    num_chs: int
    reduction: int


class FeatureInfo(list):
    """The feature levels (a list of ``FeatureLevel``) with timm's accessors."""

    def channels(self) -> list[int]:
        return [f.num_chs for f in self]

    def reduction(self) -> list[int]:
        return [f.reduction for f in self]

    def module_name(self) -> list[str]:
        return [f.module for f in self]


def _round_width(channels: int, width: float) -> int:
    return channels if width == 1.0 else make_divisible(channels * width)


def _build_block(
    row: Row, in_ch: int, spec: ModelSpec, drop_path: float, attn_impl: str
) -> tuple[nn.Module, int]:
    out_ch = _round_width(row.out, spec.width)
    if isinstance(row, Conv):
        return ConvBlock(in_ch, out_ch, row.kernel, row.stride, spec.act, spec.aa), out_ch
    if isinstance(row, FusedIBRow):
        return FusedIB(in_ch, out_ch, row.kernel, row.stride, row.expand, spec.act, spec.aa, drop_path), out_ch
    if isinstance(row, UIB):
        block = UniversalInvertedBottleneck(
            in_ch, out_ch, row.start_dw, row.mid_dw, row.stride, row.expand, spec.act, spec.aa, spec.layer_scale,
            drop_path,
        )
        return block, out_ch
    if isinstance(row, MQA):
        if out_ch != in_ch:
            raise ValueError(f"a Mobile MQA row must keep the width ({in_ch} -> {out_ch} in {spec.name})")
        block = MobileMQA(in_ch, row.heads, row.head_dim, row.kv_stride, 3, spec.layer_scale, drop_path, attn_impl)
        return block, out_ch
    raise TypeError(f"unknown row type {type(row).__name__}")


def _check_rate(name: str, value: float) -> float:
    if not isinstance(value, (int, float)) or not 0.0 <= float(value) < 1.0:
        raise ValueError(f"{name} must be a number in [0, 1), got {value!r}")
    return float(value)


class MobileNetV4(nn.Module):
    """A MobileNetV4 classifier (or, with ``features_only=True``, a 5-level feature pyramid).

    Args:
        spec: the variant's layer table (see ``mnv4.specs``); usually reached through ``mnv4.create_model``.
        num_classes: classifier outputs; 0 keeps the 1280-d pre-logits as output.
        in_chans: input channels (the stem conv's input).
        drop_rate: dropout before the classifier (paper: 0.3 for Conv-S, 0.2 otherwise).
        drop_path_rate: peak stochastic-depth rate, linear in block index over ``blocks`` (timm's schedule).
        features_only: return the feature maps of ``out_indices`` instead of logits (no head).
        out_indices: which of the 5 levels (reductions 2, 4, 8, 16, 32) to return; negatives count from the end.
        attn_impl: ``"sdpa"`` or ``"math"`` for the Mobile MQA blocks (``set_attention_impl`` changes it later).
    """

    def __init__(
        self,
        spec: ModelSpec,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        features_only: bool = False,
        out_indices: Sequence[int] | None = None,
        attn_impl: str = "sdpa",
    ):
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 0:
            raise ValueError(f"num_classes must be a non-negative int, got {num_classes!r}")
        if not isinstance(in_chans, int) or in_chans < 1:
            raise ValueError(f"in_chans must be a positive int, got {in_chans!r}")
        if attn_impl not in ATTENTION_IMPLS:
            raise ValueError(f"attn_impl must be one of {ATTENTION_IMPLS}, got {attn_impl!r}")
        self.spec = spec
        self.num_classes = num_classes if not features_only else 0
        self.in_chans = in_chans
        self.drop_rate = _check_rate("drop_rate", drop_rate)
        drop_path_rate = _check_rate("drop_path_rate", drop_path_rate)
        self.features_only = features_only
        self.grad_checkpointing = False
        self.pretrained_cfg: dict = {}

        # Stem: the width multiplier leaves it alone (timm ``fix_stem`` when the multiplier is < 1).
        stem_ch = spec.stem if spec.width < 1.0 else _round_width(spec.stem, spec.width)
        self.conv_stem = conv2d(in_chans, stem_ch, 3, stride=2)
        self.bn1 = BatchNormAct2d(stem_ch, spec.act)

        rows = spec.blocks()
        levels = [FeatureLevel(0, "bn1", stem_ch, 2)]
        stages, in_ch, reduction, block_idx = [], stem_ch, 2, 0
        for stage_idx, stage_rows in enumerate(spec.stages):
            stage = []
            for row in stage_rows:
                rate = drop_path_rate * block_idx / len(rows)
                block, in_ch = _build_block(row, in_ch, spec, rate, attn_impl)
                stage.append(block)
                reduction *= row.stride
                block_idx += 1
            stages.append(nn.Sequential(*stage))
            # A level ends where the next stage downsamples, and at the last stage (timm's feature_info).
            last = stage_idx + 1 == len(spec.stages)
            if last or spec.stages[stage_idx + 1][0].stride > 1:
                levels.append(FeatureLevel(stage_idx + 1, f"blocks.{stage_idx}", in_ch, reduction))
        self.blocks = nn.Sequential(*stages)
        self.num_features = in_ch  # 960: channels of forward_features()
        self.head_hidden_size = spec.head_hidden  # 1280: pooled pre-logits width

        self.feature_info = FeatureInfo(levels)
        if features_only:
            n = len(levels)
            indices = tuple(range(n)) if out_indices is None else tuple(out_indices)
            for i in indices:
                if not isinstance(i, int) or not -n <= i < n:
                    raise ValueError(f"out_indices must be ints in [-{n}, {n - 1}], got {out_indices!r}")
            self.out_indices = tuple(i % n for i in indices)
            self.feature_info = FeatureInfo(levels[i] for i in self.out_indices)
        else:
            if out_indices is not None:
                raise ValueError("out_indices only applies with features_only=True")
            self.global_pool = nn.AdaptiveAvgPool2d(1)
            self.conv_head = nn.Conv2d(self.num_features, self.head_hidden_size, 1, bias=False)
            self.norm_head = BatchNormAct2d(self.head_hidden_size, spec.act)
            self.flatten = nn.Flatten(1)
            self.classifier = nn.Linear(self.head_hidden_size, num_classes) if num_classes else nn.Identity()
        self._levels = levels
        init_weights_goog(self)
        for m in self.modules():
            if isinstance(m, MultiQueryAttention2d):
                m.reset_parameters()

    # ---------------------------------------------------------------- input checks
    def _check_input(self, x: torch.Tensor) -> None:
        if torch.compiler.is_compiling() or torch.jit.is_tracing():
            return  # static checks only in eager; exporters trace with known shapes
        if x.ndim != 4:
            raise ValueError(f"expected a 4-D NCHW image batch, got a tensor of shape {tuple(x.shape)}")
        if x.shape[1] != self.in_chans:
            hint = " (an NHWC tensor? use x.permute(0, 3, 1, 2))" if x.shape[-1] == self.in_chans else ""
            raise ValueError(
                f"{self.spec.name} expects {self.in_chans} input channels, got {x.shape[1]} "
                f"(input shape {tuple(x.shape)}){hint}; create the model with in_chans={x.shape[1]} if intended"
            )
        if min(x.shape[-2:]) < MIN_INPUT_SIZE:
            raise ValueError(
                f"input {x.shape[-2]}x{x.shape[-1]} is smaller than {MIN_INPUT_SIZE} px; MobileNetV4 downsamples "
                f"by 32, so resize the image to at least {MIN_INPUT_SIZE}x{MIN_INPUT_SIZE} "
                f"(native: {self.spec.resolution})"
            )
        if self.training and x.shape[0] == 1 and not self.features_only:
            raise ValueError(
                "batch size 1 in train mode: the head's BatchNorm (norm_head) sits after global pooling, so it "
                "sees one value per channel and cannot compute batch statistics. Use a batch of >= 2, or call "
                "model.eval() for inference"
            )

    # ---------------------------------------------------------------- forward
    def _run_stage(self, stage: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint(stage, x, use_reentrant=False)
        return stage(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Unpooled features: (B, num_features=960, H/32, W/32)."""
        self._check_input(x)
        x = self.bn1(self.conv_stem(x))
        for stage in self.blocks:
            x = self._run_stage(stage, x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool -> 1x1 conv 1280 + BN + act -> dropout -> classifier. ``pre_logits``: the 1280-d vector."""
        if self.features_only:
            raise RuntimeError("this model was created with features_only=True and has no head")
        x = self.flatten(self.norm_head(self.conv_head(self.global_pool(x))))
        if self.drop_rate > 0.0:
            x = nn.functional.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        if self.features_only:
            return self.forward_intermediates(x, indices=list(self.out_indices), intermediates_only=True)
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Feature maps of the 5 pyramid levels (timm's API).

        ``indices``: None = all levels, an int n = the last n, a sequence = those levels (negatives from the end).
        Returns the list, or ``(final_features, list)`` unless ``intermediates_only``. ``norm`` is accepted for API
        compatibility: MobileNetV4 has no final norm layer, so it changes nothing.
        """
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        if stop_early and not intermediates_only:
            raise ValueError("stop_early=True needs intermediates_only=True")
        take = self._take_indices(indices)
        wanted = {self._levels[i].index for i in take}
        self._check_input(x)
        x = self.bn1(self.conv_stem(x))
        out = [x] if 0 in wanted else []
        last = max(wanted) if stop_early else len(self.blocks)
        for i, stage in enumerate(self.blocks[:last], start=1):
            x = self._run_stage(stage, x)
            if i in wanted:
                out.append(x)
        return out if intermediates_only else (x, out)

    def _take_indices(self, indices: int | Sequence[int] | None) -> list[int]:
        n = len(self._levels)
        if indices is None:
            return list(range(n))
        if isinstance(indices, int):
            if not 0 < indices <= n:
                raise ValueError(f"indices={indices}: the last-n form takes 1 to {n}")
            return list(range(n - indices, n))
        out = []
        for i in indices:
            if not -n <= i < n:
                raise ValueError(f"feature index {i} out of range for {n} levels")
            out.append(i % n)
        return sorted(out)

    # ---------------------------------------------------------------- timm-style helpers
    def get_classifier(self) -> nn.Module:
        return self.classifier

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier by a fresh one with ``num_classes`` outputs (0 = identity, pre-logits out)."""
        if self.features_only:
            raise RuntimeError("features_only models have no classifier")
        if not isinstance(num_classes, int) or num_classes < 0:
            raise ValueError(f"num_classes must be a non-negative int, got {num_classes!r}")
        self.num_classes = num_classes
        ref = self.conv_head.weight
        if num_classes:
            self.classifier = nn.Linear(self.head_hidden_size, num_classes, device=ref.device, dtype=ref.dtype)
            init_weights_goog(self.classifier)
        else:
            self.classifier = nn.Identity()

    def group_matcher(self, coarse: bool = False) -> dict[str, str]:
        """Parameter groups for layer-wise LR decay (timm convention)."""
        return {"stem": r"^conv_stem|bn1", "blocks": r"^blocks\.(\d+)" if coarse else r"^blocks\.(\d+)\.(\d+)"}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each stage in the backward pass instead of storing its activations (less memory, ~30% more
        compute). As in timm, BN running statistics of a recomputed stage are updated twice per step."""
        self.grad_checkpointing = enable

    def prune_intermediate_layers(self, indices: int | Sequence[int] = 1, prune_head: bool = True) -> list[int]:
        """Drop the stages after the last requested level (and the head), for use as a backbone (timm's API).

        Returns the kept level indices. After pruning, ``forward_intermediates`` with the same indices still works
        and ``forward_features`` ends at the last kept level.
        """
        if self.features_only:
            raise RuntimeError("prune_intermediate_layers works on a classifier model, not a features_only one")
        take = self._take_indices(indices)
        last = self._levels[max(take)]
        self.blocks = self.blocks[: last.index]
        self._levels = self._levels[: max(take) + 1]
        self.feature_info = FeatureInfo(self._levels)
        if last.index < len(self.spec.stages) or prune_head:
            self.num_features = last.num_chs
            for name in ("global_pool", "conv_head", "norm_head", "flatten"):
                setattr(self, name, nn.Identity())
            self.classifier = nn.Identity()
            self.num_classes = 0
            self.head_hidden_size = self.num_features
        return take

    def fuse(self) -> MobileNetV4:
        """Fold BN and layer scale into the convs, in place, for inference (``mnv4.deploy.deploy``)."""
        from .deploy import deploy

        return deploy(self, inplace=True)

    def set_attention_impl(self, impl: str) -> MobileNetV4:
        """Switch every Mobile MQA block between ``"sdpa"`` and ``"math"`` (same weights, same results)."""
        for m in self.modules():
            if isinstance(m, MultiQueryAttention2d):
                m.impl = impl
        return self
