"""The MobileNetV4 network, built from a ``ModelSpec`` table (specs.py).

Layout and names follow timm's MobileNetV3/V4 class so its checkpoints load strictly:
``conv_stem``/``bn1`` (stem), ``blocks.<stage>.<block>`` (the table), then the head ``global_pool`` ->
``conv_head`` (1x1, no bias) -> ``norm_head`` (BN + act) -> flatten -> dropout -> ``classifier``.

Two widths, as in timm (and two timm issues, #2228 / #2290, from users who mixed them up):
- ``num_features`` = 960: channels of the unpooled map from ``forward_features``;
- ``head_hidden_size`` = 1280: width of the pooled vector from ``forward_head(x, pre_logits=True)``.

The forward pass compiles with ``torch.jit.script``, traces with ``torch.jit.trace``, ``torch.fx`` (and torchvision's
``create_feature_extractor``; the traced GraphModule scripts too), ``torch.export`` and the ONNX exporters. The input
checks that turn a wrong tensor into one clear error run in eager mode (and inside an FX ``GraphModule``) and are
invisible to every compiler: they sit in ``check_image_batch``, which FX keeps as one opaque call and the others skip.
"""

from __future__ import annotations

import typing
from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .blocks import ATTENTION_IMPLS, ConvBlock, FusedIB, MobileMQA, MultiQueryAttention2d, UniversalInvertedBottleneck
from .deploy import deploy
from .errors import UserError
from .layers import BatchNormAct2d, conv2d, init_weights_goog, make_divisible
from .specs import MIN_INPUT_SIZE, MQA, UIB, Conv, ModelSpec, Row
from .specs import FusedIB as FusedIBRow

# Global pooling before the head: timm's pool types whose output keeps ``num_features`` channels (the head conv is
# sized for them); '' = none: the head's 1x1 conv, BN and activation run on the unpooled map (timm's behaviour).
GLOBAL_POOLS = ("avg", "max", "")
# What a features_only model returns: a list of maps (timm's default) or an OrderedDict keyed by level ("0".."4").
# "getter" names timm's FeatureGetterNet, forward_intermediates(indices=out_indices, intermediates_only=True) on the
# model pruned after the last level: the same maps as a features_only forward here, which runs forward_intermediates'
# stage loop and stops at the last level, so it is the same list.
FEATURE_CLASSES = ("list", "dict", "getter")
# Where the maps stop shrinking: 32 = the classifier; 16 and 8 = dense-prediction backbones (TF Model Garden's
# MobileNet ``output_stride``; DeepLab's "fast" and "accurate" fully convolutional modes).
OUTPUT_STRIDES = (8, 16, 32)


class FeatureLevel(dict):
    """One pyramid level, as timm describes it: a dict, whose keys also read as attributes (``level.num_chs``).

    ``index``: the level number (0-4) that ``out_indices`` and ``forward_intermediates(indices=...)`` refer to;
    ``stage``: where the map is taken in the forward pass (0 = stem, i = after ``blocks[i - 1]``; timm's ``stage``);
    ``module``: the module whose output it is (a valid ``return_nodes`` name for torchvision's
    ``create_feature_extractor``); ``num_chs``: channels; ``reduction``: stride with respect to the input.
    """

    def __init__(self, index: int, stage: int, module: str, num_chs: int, reduction: int):
        super().__init__(index=index, stage=stage, module=module, num_chs=num_chs, reduction=reduction)

    def __getattr__(self, key: str):
        try:
            return self[key]
        except KeyError:
            raise AttributeError(f"feature level has no {key!r}; its keys: {', '.join(self)}") from None


class FeatureInfo(list):
    """The feature levels (a list of ``FeatureLevel`` dicts) with timm's accessors.

    ``timm.models.FeatureInfo(model.feature_info, out_indices)`` takes it as it takes timm's own list.
    """

    def channels(self) -> list[int]:
        return [f.num_chs for f in self]

    def reduction(self) -> list[int]:
        return [f.reduction for f in self]

    def module_name(self) -> list[str]:
        return [f.module for f in self]


# ---------------------------------------------------------------------------------------------------- input checks
def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _dtype_error(x: torch.Tensor, expected: torch.dtype, name: str) -> str | None:
    """What is wrong with the input's dtype, or None. Under autocast any float input is fine (autocast casts it)."""
    if x.dtype == expected:
        return None
    if x.is_floating_point() and torch.is_autocast_enabled(x.device.type):
        return None
    got, want = _dtype_name(x.dtype), _dtype_name(expected)
    if not x.is_floating_point():
        hint = (
            "images as integers? Preprocess them with mnv4.eval_transform(mnv4.data_config(model)), or use "
            "x.float() / 255 and normalise with the model's mean/std"
        )
    else:
        hint = f"cast the input (x.to(torch.{want})) or the model (model.to(torch.{got})), or run under torch.autocast"
    return f"{name} expects {want} input like its weights, got {got}: {hint}"


def _raise_input_errors(
    x: torch.Tensor, in_chans: int, dtype: torch.dtype, name: str, native: int, pooled_batch_stats: bool
) -> None:
    if not isinstance(x, torch.Tensor):
        raise UserError(f"{name} takes a torch.Tensor image batch (N, C, H, W), got a {type(x).__name__}")
    if x.ndim != 4:
        hint = " (one image? add the batch dimension: x.unsqueeze(0))" if x.ndim == 3 else ""
        raise UserError(f"expected a 4-D NCHW image batch, got a tensor of shape {tuple(x.shape)}{hint}")
    if x.shape[1] != in_chans:
        hint = " (an NHWC tensor? use x.permute(0, 3, 1, 2))" if x.shape[-1] == in_chans else ""
        raise UserError(
            f"{name} expects {in_chans} input channels, got {x.shape[1]} (input shape {tuple(x.shape)}){hint}; "
            f"create the model with in_chans={x.shape[1]} if intended"
        )
    if min(x.shape[-2:]) < MIN_INPUT_SIZE:
        raise UserError(
            f"input {x.shape[-2]}x{x.shape[-1]} is smaller than {MIN_INPUT_SIZE} px; MobileNetV4 downsamples by 32, "
            f"so resize the image to at least {MIN_INPUT_SIZE}x{MIN_INPUT_SIZE} (native: {native})"
        )
    problem = _dtype_error(x, dtype, name)
    if problem:
        raise UserError(problem)
    if pooled_batch_stats and x.shape[0] == 1:
        raise UserError(
            "batch size 1 in train mode: the head's BatchNorm (norm_head) sits after global pooling, so it sees one "
            "value per channel and cannot compute batch statistics. Use a batch of >= 2, or call model.eval() for "
            "inference"
        )


@torch.fx.wrap
def check_image_batch(
    x: torch.Tensor, in_chans: int, dtype: torch.dtype, name: str, native: int, pooled_batch_stats: bool
) -> torch.Tensor:
    """``x`` unchanged, after raising one ``UserError`` if it cannot be this model's input (eager mode only).

    ``torch.fx.wrap`` makes FX record this call as one node instead of tracing into it, so a traced ``GraphModule``
    still checks its real inputs; TorchScript never compiles the checks (static ``is_scripting`` branch), and
    ``torch.jit.trace`` / ``torch.export`` / the ONNX exporters skip them (their inputs are example tensors).
    """
    if not torch.jit.is_scripting():
        if not (torch.jit.is_tracing() or torch.compiler.is_compiling()):
            _raise_input_errors(x, in_chans, dtype, name, native, pooled_batch_stats)
    return x


# ---------------------------------------------------------------------------------------------------- building
def _round_width(channels: int, width: float) -> int:
    return channels if width == 1.0 else make_divisible(channels * width)


def row_geometry(spec: ModelSpec, output_stride: int = 32) -> list[list[tuple[int, int]]]:
    """``(stride, dilation)`` of every table row, stage by stage, when the maps stop shrinking at ``output_stride``.

    TF Model Garden's MobileNet ``output_stride`` rule (``official/vision/modeling/backbones/mobilenet.py``), which
    torchvision's ``dilated`` MobileNetV3 also follows: once the running stride (2 after the stem) has reached
    ``output_stride``, a strided row runs at stride 1 and the dilation rate doubles for the rows after it. Each
    de-strided row keeps the rate before it, except the first one, which already takes the doubled rate (TF: rate
    2 for the whole first dilated stage; TF-slim and DeepLab's ResNets would give that row rate 1). So at output
    stride 16 the /32 stage runs at dilation 2; at 8 the /16 stage runs at 2 and the /32 stage at 2 (its strided
    row), then 4. The dilation goes to every k x k conv of a row (both depthwise convs of a UIB, as TF); 1x1 convs
    and the Mobile MQA's K/V downsampling are left alone (docs/segmentation.md, "Mobile MQA at a smaller output
    stride"). The weights do not change: every variant's state dict fits any output stride.
    """
    if output_stride not in OUTPUT_STRIDES:
        raise UserError(f"output_stride must be one of {OUTPUT_STRIDES} (32 = the classifier), got {output_stride!r}")
    current, rate, geometry = 2, 1, []
    for stage in spec.stages:
        rows = []
        for row in stage:
            if current >= output_stride:
                before, rate = rate, rate * row.stride
                rows.append((1, before if before > 1 else rate))
            else:
                current *= row.stride
                rows.append((row.stride, 1))
        geometry.append(rows)
    return geometry


def _build_block(
    row: Row, in_ch: int, spec: ModelSpec, drop_path: float, attn_impl: str, stride: int, dilation: int
) -> tuple[nn.Module, int]:
    """The block of ``row``, running at ``stride`` with ``dilation`` (``row_geometry``; the row's own stride in a
    classifier)."""
    out_ch = _round_width(row.out, spec.width)
    if isinstance(row, Conv):
        return ConvBlock(in_ch, out_ch, row.kernel, stride, spec.act, spec.aa, dilation), out_ch
    if isinstance(row, FusedIBRow):
        return FusedIB(in_ch, out_ch, row.kernel, stride, row.expand, spec.act, spec.aa, drop_path, dilation), out_ch
    if isinstance(row, UIB):
        block = UniversalInvertedBottleneck(
            in_ch, out_ch, row.start_dw, row.mid_dw, stride, row.expand, spec.act, spec.aa, spec.layer_scale,
            drop_path, dilation,
        )
        return block, out_ch
    if isinstance(row, MQA):
        if out_ch != in_ch:
            raise UserError(f"a Mobile MQA row must keep the width ({in_ch} -> {out_ch} in {spec.name})")
        # kv_stride is kept at every output stride: see row_geometry
        block = MobileMQA(in_ch, row.heads, row.head_dim, row.kv_stride, 3, spec.layer_scale, drop_path, attn_impl)
        return block, out_ch
    raise TypeError(f"unknown row type {type(row).__name__}")


def _check_rate(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) < 1.0:
        raise UserError(f"{name} must be a number in [0, 1), got {value!r}")
    return float(value)


def _check_num_classes(num_classes: int) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
        raise UserError(f"num_classes must be a non-negative int, got {num_classes!r}")
    return num_classes


def _make_global_pool(pool_type: str) -> nn.Module:
    if pool_type == "avg":
        return nn.AdaptiveAvgPool2d(1)
    if pool_type == "max":
        return nn.AdaptiveMaxPool2d(1)
    if pool_type == "":
        return nn.Identity()
    raise UserError(
        f"global_pool must be one of {GLOBAL_POOLS} ('' = no pooling: the head runs on the unpooled map), got "
        f"{pool_type!r}"
    )


def _levels_of(
    spec: ModelSpec, stem_ch: int, stage_channels: list[int], geometry: list[list[tuple[int, int]]]
) -> list[FeatureLevel]:
    """The 5 pyramid levels: the stem, then the end of every stage after which the next one downsamples in the
    table, and the last stage (timm's feature_info for these models). ``reduction`` is the stride the map really
    has (capped at the output stride, as timm reports it for a dilated model)."""
    levels = [FeatureLevel(0, 0, "bn1", stem_ch, 2)]
    reduction = 2
    for stage_idx, stage_geometry in enumerate(geometry):
        for stride, _ in stage_geometry:
            reduction *= stride
        last = stage_idx + 1 == len(spec.stages)
        if last or spec.stages[stage_idx + 1][0].stride > 1:
            levels.append(
                FeatureLevel(len(levels), stage_idx + 1, f"blocks.{stage_idx}", stage_channels[stage_idx], reduction)
            )
    return levels


def resolve_levels(indices: int | Sequence[int] | None, num_levels: int, what: str) -> list[int]:
    """Level numbers from timm's index forms: None = all, an int n = the last n, a sequence = those levels
    (negatives count from the end). Refuses empty, repeated and out-of-order selections, so the i-th output is
    always the i-th level asked for."""
    if indices is None:
        return list(range(num_levels))
    if isinstance(indices, int) and not isinstance(indices, bool):
        if not 0 < indices <= num_levels:
            raise UserError(f"{what}={indices}: an int means the last n levels, so it takes 1 to {num_levels}")
        return list(range(num_levels - indices, num_levels))
    chosen = list(indices) if isinstance(indices, Sequence) and not isinstance(indices, str) else None
    if chosen is None or not all(isinstance(i, int) and not isinstance(i, bool) for i in chosen):
        raise UserError(f"{what} must be None, an int or a sequence of ints, got {indices!r}")
    bad = [i for i in chosen if not -num_levels <= i < num_levels]
    if bad:
        raise UserError(f"{what}={tuple(chosen)}: level {bad[0]} does not exist; the {num_levels} levels are "
                        f"0-{num_levels - 1} (negatives count from the end)")
    if not chosen:
        raise UserError(f"{what} is empty: pass at least one level (0-{num_levels - 1}), or None for all of them")
    levels = [i % num_levels for i in chosen]
    if any(b <= a for a, b in zip(levels, levels[1:], strict=False)):
        raise UserError(
            f"{what}={tuple(chosen)} (levels {levels}): list each level once, shallow to deep, e.g. "
            f"{tuple(sorted(set(levels)))}; the outputs come in that order"
        )
    return levels


# ---------------------------------------------------------------------------------------------------- the model
class MobileNetV4(nn.Module):
    """A MobileNetV4 classifier (or, with ``features_only=True``, a 5-level feature pyramid).

    Args:
        spec: the variant's layer table (see ``mnv4.specs``); usually reached through ``mnv4.create_model``.
        num_classes: classifier outputs; 0 keeps the 1280-d pre-logits as output.
        in_chans: input channels (the stem conv's input).
        drop_rate: dropout before the classifier (paper: 0.3 for Conv-S, 0.2 otherwise).
        drop_path_rate: peak stochastic-depth rate, linear in block index over ``blocks`` (timm's schedule).
        global_pool: ``"avg"`` (the trained head), ``"max"``, or ``""``: no pooling, so the head's 1x1 conv + BN +
            act run on the unpooled map and the output is ``(B, 1280, H/32, W/32)`` (timm's behaviour; needs
            ``num_classes=0``).
        features_only: return the feature maps of ``out_indices`` instead of logits (no head).
        out_indices: which of the 5 levels (reductions 2, 4, 8, 16, 32) to return, shallow to deep; negatives count
            from the end; an int n = the last n levels.
        feature_cls: what a ``features_only`` model returns: ``"list"`` (default) or ``"dict"``, an ``OrderedDict``
            keyed by level number as a string (``"0"``..``"4"``), the form torchvision's detection necks take;
            ``"getter"`` (timm's feature-getter form over ``forward_intermediates``) is the same list as ``"list"``.
        attn_impl: ``"sdpa"`` or ``"math"`` for the Mobile MQA blocks (``set_attention_impl`` changes it later).
        output_stride: 32 (the classifier), or 16 / 8 for dense prediction: the strided convs of the later stages
            run at stride 1 and the convs after them are dilated (``row_geometry``), so the last map is H/16 or
            H/8. Same parameters, same state dict: classification weights load unchanged. Mobile MQA blocks keep
            their K/V downsampling (stride relative to the map they run on), so their attention grows with the map.
    """

    # TorchScript treats these as constants and compiles only the branches of forward that this model uses.
    __constants__ = ("features_only", "feature_dict")
    __jit_unused_properties__ = ["default_cfg"]

    def __init__(
        self,
        spec: ModelSpec,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        features_only: bool = False,
        out_indices: int | Sequence[int] | None = None,
        attn_impl: str = "sdpa",
        global_pool: str = "avg",
        feature_cls: str | None = None,
        output_stride: int = 32,
    ):
        super().__init__()
        _check_num_classes(num_classes)
        geometry = row_geometry(spec, output_stride)
        if isinstance(in_chans, bool) or not isinstance(in_chans, int) or in_chans < 1:
            raise UserError(f"in_chans must be a positive int, got {in_chans!r}")
        if attn_impl not in ATTENTION_IMPLS:
            raise UserError(f"attn_impl must be one of {ATTENTION_IMPLS}, got {attn_impl!r}")
        if feature_cls is not None and not features_only:
            raise UserError("feature_cls only applies with features_only=True")
        if features_only and (feature_cls or "list") not in FEATURE_CLASSES:
            raise UserError(
                f"feature_cls must be one of {FEATURE_CLASSES} (a list of maps, an OrderedDict keyed '0'..'4', or "
                f"timm's getter form: a list), got {feature_cls!r}"
            )
        if out_indices is not None and not features_only:
            raise UserError("out_indices only applies with features_only=True (or use forward_intermediates)")
        self.spec = spec
        self.num_classes = num_classes if not features_only else 0
        self.in_chans = in_chans
        self.drop_rate = _check_rate("drop_rate", drop_rate)
        drop_path_rate = _check_rate("drop_path_rate", drop_path_rate)
        self.features_only = bool(features_only)
        self.feature_dict = features_only and feature_cls == "dict"
        self.grad_checkpointing = False
        self.output_stride = output_stride
        self.pretrained_cfg: dict = {}

        # Stem: the width multiplier leaves it alone (timm ``fix_stem`` when the multiplier is < 1).
        stem_ch = spec.stem if spec.width < 1.0 else _round_width(spec.stem, spec.width)
        self.conv_stem = conv2d(in_chans, stem_ch, 3, stride=2)
        self.bn1 = BatchNormAct2d(stem_ch, spec.act)

        num_blocks = sum(len(stage) for stage in spec.stages)
        stages, stage_channels, in_ch, block_idx = [], [], stem_ch, 0
        for stage_rows, stage_geometry in zip(spec.stages, geometry, strict=True):
            stage = []
            for row, (stride, dilation) in zip(stage_rows, stage_geometry, strict=True):
                rate = drop_path_rate * block_idx / num_blocks
                block, in_ch = _build_block(row, in_ch, spec, rate, attn_impl, stride, dilation)
                stage.append(block)
                block_idx += 1
            stages.append(nn.Sequential(*stage))
            stage_channels.append(in_ch)
        self.blocks = nn.Sequential(*stages)
        self.num_features = in_ch  # 960: channels of forward_features()
        self.head_hidden_size = spec.head_hidden  # 1280: pooled pre-logits width
        self._levels = _levels_of(spec, stem_ch, stage_channels, geometry)

        if features_only:
            self.out_indices = tuple(resolve_levels(out_indices, len(self._levels), "out_indices"))
            self.feature_info = FeatureInfo(self._levels[i] for i in self.out_indices)
            self.pool_type = ""
        else:
            self.out_indices = ()
            self.feature_info = FeatureInfo(self._levels)
            self.pool_type = global_pool
            self.global_pool = _make_global_pool(global_pool)
            self.conv_head = nn.Conv2d(self.num_features, self.head_hidden_size, 1, bias=False)
            self.norm_head = BatchNormAct2d(self.head_hidden_size, spec.act)
            self.flatten = nn.Flatten(1) if global_pool else nn.Identity()
            self._check_head(global_pool, num_classes)
            self.classifier = nn.Linear(self.head_hidden_size, num_classes) if num_classes else nn.Identity()
        # Plain lists of ints/strings for the scripted forward (TorchScript cannot read the FeatureLevel dicts).
        self._out_stages = [self._levels[i].stage for i in self.out_indices]
        self._out_keys = [str(i) for i in self.out_indices]
        init_weights_goog(self)
        for m in self.modules():
            if isinstance(m, MultiQueryAttention2d):
                m.reset_parameters()

    @property
    def default_cfg(self) -> dict:
        """timm's older name for ``pretrained_cfg`` (the same dict)."""
        return self.pretrained_cfg

    @default_cfg.setter
    def default_cfg(self, cfg: dict) -> None:
        self.pretrained_cfg = cfg

    @staticmethod
    def _check_head(pool_type: str, num_classes: int) -> None:
        if pool_type == "" and num_classes:
            raise UserError(
                f"global_pool='' keeps the head's output unpooled, (B, 1280, H/32, W/32), which a {num_classes}-class "
                "linear classifier cannot take: pass num_classes=0 (timm's form for an unpooled head), or keep "
                "global_pool='avg'"
            )

    # ---------------------------------------------------------------- forward
    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():
            x = check_image_batch(
                x, self.in_chans, self.conv_stem.weight.dtype, self.spec.name, self.spec.resolution,
                self.training and self.pool_type != "",
            )
        return self.bn1(self.conv_stem(x))

    def _run_stages(self, x: torch.Tensor, taps: list[int], last: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Stages 1..``last`` on the stem output ``x``; also returns the maps at stage positions ``taps`` (0 = the
        stem output). One loop for every forward form, written so TorchScript can unroll it."""
        maps: list[torch.Tensor] = []
        if 0 in taps:
            maps.append(x)
        for i, stage in enumerate(self.blocks):
            if i < last:
                if not torch.jit.is_scripting() and self.grad_checkpointing and torch.is_grad_enabled():
                    x = checkpoint(stage, x, use_reentrant=False)
                else:
                    x = stage(x)
                if i + 1 in taps:
                    maps.append(x)
        return x, maps

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Unpooled features: (B, num_features=960, H/32, W/32)."""
        no_taps: list[int] = []
        x, _ = self._run_stages(self._stem(x), no_taps, len(self.blocks))
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool -> 1x1 conv 1280 + BN + act -> dropout -> classifier. ``pre_logits``: the 1280-d vector (with
        ``global_pool=''``: the unpooled (B, 1280, h, w) map)."""
        if self.features_only:
            raise UserError("this model was created with features_only=True and has no head")
        x = self.flatten(self.norm_head(self.conv_head(self.global_pool(x))))
        if self.drop_rate > 0.0:
            x = nn.functional.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.classifier(x)

    def _forward_pyramid(self, x: torch.Tensor) -> list[torch.Tensor]:
        _, maps = self._run_stages(self._stem(x), self._out_stages, self._out_stages[-1])
        return maps

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor] | dict[str, torch.Tensor]:
        """Logits (B, num_classes); with ``features_only``, the maps of ``out_indices`` as a list or (``feature_cls
        ='dict'``) an ``OrderedDict`` keyed ``"0"``..``"4"`` by level."""
        if self.features_only:
            maps = self._forward_pyramid(x)
            if self.feature_dict:
                named: dict[str, torch.Tensor] = OrderedDict()
                for i, fmap in enumerate(maps):  # (TorchScript has no zip(strict=...))
                    named[self._out_keys[i]] = fmap
                return named
            return maps
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

        ``indices``: None = all levels, an int n = the last n, a sequence = those levels shallow to deep (negatives
        from the end). Returns the list, or ``(final_features, list)`` unless ``intermediates_only``. ``norm`` is
        accepted for API compatibility: MobileNetV4 has no final norm layer, so it changes nothing.
        """
        if output_fmt != "NCHW":
            raise UserError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        if stop_early and not intermediates_only:
            raise UserError("stop_early=True needs intermediates_only=True")
        taps = [self._levels[i].stage for i in resolve_levels(indices, len(self._levels), "indices")]
        last = max(taps) if stop_early else len(self.blocks)
        x, maps = self._run_stages(self._stem(x), taps, last)
        return maps if intermediates_only else (x, maps)

    # ---------------------------------------------------------------- timm-style helpers
    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.classifier

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the classifier by a fresh one with ``num_classes`` outputs (0 = identity: the head's 1280-d output)
        and, if given, the global pooling (``"avg"``, ``"max"``, or ``""`` = none, with ``num_classes=0``)."""
        if self.features_only:
            raise UserError("features_only models have no classifier; create the model without features_only")
        _check_num_classes(num_classes)
        pool_type = self.pool_type if global_pool is None else global_pool
        pool = _make_global_pool(pool_type)
        self._check_head(pool_type, num_classes)
        self.pool_type, self.global_pool = pool_type, pool
        self.flatten = nn.Flatten(1) if pool_type else nn.Identity()
        self.num_classes = num_classes
        ref = self.conv_stem.weight  # the head convs may be pruned away; the stem is always there
        if num_classes:
            self.classifier = nn.Linear(self.head_hidden_size, num_classes, device=ref.device, dtype=ref.dtype)
            init_weights_goog(self.classifier)
        else:
            self.classifier = nn.Identity()
        for m in (self.global_pool, self.flatten, self.classifier):
            m.train(self.training)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, str]:
        """Parameter groups for layer-wise LR decay (timm convention)."""
        return {"stem": r"^conv_stem|bn1", "blocks": r"^blocks\.(\d+)" if coarse else r"^blocks\.(\d+)\.(\d+)"}

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each stage in the backward pass instead of storing its activations (less memory, ~30% more
        compute). As in timm, BN running statistics of a recomputed stage are updated twice per step."""
        self.grad_checkpointing = enable

    def prune_intermediate_layers(
        self, indices: int | Sequence[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop the stages after the last requested level (and the head), for use as a backbone (timm's API).

        Returns the kept level indices. After pruning, ``forward_intermediates`` with the same indices still works
        and ``forward_features`` ends at the last kept level. ``prune_norm`` is accepted for API compatibility
        (MobileNetV4 has no final norm).
        """
        if self.features_only:
            raise UserError("prune_intermediate_layers works on a classifier model, not a features_only one")
        take = resolve_levels(indices, len(self._levels), "indices")
        last = self._levels[max(take)]
        self.blocks = self.blocks[: last.stage]
        self._levels = self._levels[: max(take) + 1]
        self.feature_info = FeatureInfo(self._levels)
        if last.stage < len(self.spec.stages) or prune_head:
            self.num_features = last.num_chs
            self.conv_head, self.norm_head = nn.Identity(), nn.Identity()
            self.head_hidden_size = self.num_features
            self.reset_classifier(0, "")
        return take

    def fuse(self) -> MobileNetV4:
        """Fold BN and layer scale into the convs, in place, for inference (``mnv4.deploy.deploy``)."""
        return deploy(self, inplace=True)

    def set_attention_impl(self, impl: str) -> MobileNetV4:
        """Switch every Mobile MQA block between ``"sdpa"`` and ``"math"`` (same weights, same results)."""
        if impl not in ATTENTION_IMPLS:
            raise UserError(f"attention impl must be one of {ATTENTION_IMPLS}, got {impl!r}")
        for m in self.modules():
            if isinstance(m, MultiQueryAttention2d):
                m.impl = impl
        return self


# torch.fx copies forward's annotations into the code of a traced GraphModule. Under ``from __future__ import
# annotations`` they are strings, which FX turns into global names TorchScript cannot resolve: scripting a traced model
# (timm's test_model_forward_fx_torchscript) failed with "Unknown type name '_torch_Tensor_'". The evaluated types
# script (the eager input check it records, ``check_image_batch``, compiles to nothing as in any scripted model).
MobileNetV4.forward.__annotations__ = typing.get_type_hints(MobileNetV4.forward)
