"""The MobileNetV4 blocks: plain conv, FusedIB, Universal Inverted Bottleneck and Mobile MQA (paper §4-5).

Each block is a small ``nn.Module`` whose attribute names match timm's MNv4 modules, so released checkpoints load
strictly. Semantics follow the TF Model Garden and timm code where they differ from the paper text (e.g. Conv-S's
two "FusedIB" rows of paper Tab. 11 are four conv + BN + act layers in both code bases).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from .errors import UserError
from .layers import BatchNormAct2d, ConvNormAct, LayerScale2d, conv2d, make_divisible, make_downsample, make_drop_path

ATTENTION_IMPLS = ("sdpa", "math")


class ConvBlock(nn.Module):
    """Plain conv + BN + act, no residual: the stem-like rows of Conv-S and the final 1x1 -> 960 layer (TF
    ``Conv2DBNBlock``, timm ``ConvBnAct``)."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel: int,
        stride: int = 1,
        act: str = "relu",
        aa: str | None = None,
        dilation: int = 1,
    ):
        super().__init__()
        use_aa = aa is not None and stride > 1
        self.conv = conv2d(in_ch, out_ch, kernel, 1 if use_aa else stride, dilation=dilation)
        self.bn1 = BatchNormAct2d(out_ch, act)
        self.aa = make_downsample(aa, out_ch) if use_aa else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.aa(self.bn1(self.conv(x)))


class FusedIB(nn.Module):
    """FusedIB: a full k x k conv expanding to in*e channels (BN + act), then a linear 1x1 projection (BN).

    The residual exists only for stride 1 and in == out, which never happens in MNv4 (its FusedIB is strided), hence
    no drop path or layer scale here (paper §4; TF ``InvertedBottleneckBlock`` without depthwise, timm
    ``EdgeResidual``). ``dilation``: the k x k conv's (a dense-prediction backbone, ``model.row_geometry``).
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel: int,
        stride: int,
        expand: float,
        act: str = "relu",
        aa: str | None = None,
        drop_path: float = 0.0,
        dilation: int = 1,
    ):
        super().__init__()
        mid_ch = make_divisible(in_ch * expand)
        use_aa = aa is not None and stride > 1
        self.has_skip = stride == 1 and in_ch == out_ch
        self.conv_exp = conv2d(in_ch, mid_ch, kernel, 1 if use_aa else stride, dilation=dilation)
        self.bn1 = BatchNormAct2d(mid_ch, act)
        self.aa = make_downsample(aa, mid_ch) if use_aa else nn.Identity()
        self.conv_pwl = conv2d(mid_ch, out_ch, 1)
        self.bn2 = BatchNormAct2d(out_ch, None)
        self.drop_path = make_drop_path(drop_path if self.has_skip else 0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.aa(self.bn1(self.conv_exp(x)))
        x = self.bn2(self.conv_pwl(x))
        return self.drop_path(x) + shortcut if self.has_skip else x


class UniversalInvertedBottleneck(nn.Module):
    """The Universal Inverted Bottleneck (paper §4, Fig. 4; TF ``UniversalInvertedBottleneckBlock``).

    start DW (K1, BN, no act) -> 1x1 expand (BN + act) -> middle DW (K2, BN + act) -> 1x1 project (BN)
    -> layer scale -> drop path -> + input (when stride 1 and in == out).

    ``start_dw`` / ``mid_dw`` are kernel sizes, 0 meaning "absent", which gives the four instantiations:
    ExtraDW (both), IB (middle only), ConvNext (start only) and FFN (neither). A strided block puts its stride on the
    middle DW when there is one, else on the start DW (TF ``middle_dw_downsample=True``). ``dilation`` applies to
    both DWs (TF ``dilation_rate``: a dense-prediction backbone, ``model.row_geometry``).
    """

    __jit_unused_properties__ = ["kind"]  # TorchScript compiles properties; this one is for Python callers only

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        start_dw: int,
        mid_dw: int,
        stride: int,
        expand: float,
        act: str = "relu",
        aa: str | None = None,
        layer_scale: float | None = None,
        drop_path: float = 0.0,
        dilation: int = 1,
    ):
        super().__init__()
        if stride > 1 and not (start_dw or mid_dw):
            raise UserError("a strided UIB needs a start or middle depthwise conv to carry the stride (FFN can't)")
        self.has_skip = stride == 1 and in_ch == out_ch
        mid_ch = make_divisible(in_ch * expand)
        if start_dw:
            start_stride = 1 if mid_dw else stride
            self.dw_start = ConvNormAct(
                in_ch, in_ch, start_dw, start_stride, groups=in_ch, act=None, aa=aa, dilation=dilation
            )
        else:
            self.dw_start = nn.Identity()
        self.pw_exp = ConvNormAct(in_ch, mid_ch, 1, act=act)
        if mid_dw:
            self.dw_mid = ConvNormAct(mid_ch, mid_ch, mid_dw, stride, groups=mid_ch, act=act, aa=aa, dilation=dilation)
        else:
            self.dw_mid = nn.Identity()
        self.pw_proj = ConvNormAct(mid_ch, out_ch, 1, act=None)
        self.layer_scale = LayerScale2d(out_ch, layer_scale) if layer_scale is not None else nn.Identity()
        self.drop_path = make_drop_path(drop_path if self.has_skip else 0.0)

    @property
    def kind(self) -> str:
        has_start, has_mid = not isinstance(self.dw_start, nn.Identity), not isinstance(self.dw_mid, nn.Identity)
        return {(True, True): "ExtraDW", (False, True): "IB", (True, False): "ConvNext", (False, False): "FFN"}[
            (has_start, has_mid)
        ]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.pw_proj(self.dw_mid(self.pw_exp(self.dw_start(x))))
        x = self.layer_scale(x)
        return self.drop_path(x) + shortcut if self.has_skip else x


def _kv_branch(channels: int, dim: int, kv_stride: int, kernel: int) -> nn.Sequential:
    """Key or value branch: optional strided DW conv + BN (the paper's SR(X)), then a 1x1 conv to one shared head."""
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    if kv_stride > 1:
        layers["down_conv"] = conv2d(channels, channels, kernel, kv_stride, groups=channels)
        layers["norm"] = nn.BatchNorm2d(channels)
    layers["proj"] = conv2d(channels, dim, 1)
    return nn.Sequential(layers)


class MultiQueryAttention2d(nn.Module):
    """Multi-query attention on NCHW maps: ``num_heads`` query heads, ONE shared key head and ONE shared value head.

    Keys and values are optionally downsampled by their own stride-``kv_stride`` depthwise conv + BN (paper §5, Eq. 2,
    which replaces SRA's average pooling by a strided DW conv). Because every query head attends to the same keys,
    the heads are folded into the query sequence: attention runs as a single head over (heads * H * W) queries and
    H' * W' keys, which is the same arithmetic with no broadcasting and no K/V copies per head.

    ``impl`` selects ``"sdpa"`` (``F.scaled_dot_product_attention``) or ``"math"`` (explicit matmul-softmax-matmul,
    for exporters and runtimes that do not take SDPA).
    """

    __jit_unused_properties__ = ["impl"]  # forward reads ``_impl``; the validating property is for Python callers

    def __init__(
        self,
        channels: int,
        num_heads: int,
        key_dim: int,
        value_dim: int | None = None,
        kv_stride: int = 1,
        kv_kernel: int = 3,
        out_channels: int | None = None,
        impl: str = "sdpa",
    ):
        super().__init__()
        value_dim = value_dim or key_dim
        self.num_heads, self.key_dim, self.value_dim, self.kv_stride = num_heads, key_dim, value_dim, kv_stride
        self.scale = key_dim**-0.5
        self.impl = impl
        self.query = nn.Sequential(OrderedDict(proj=conv2d(channels, num_heads * key_dim, 1)))
        self.key = _kv_branch(channels, key_dim, kv_stride, kv_kernel)
        self.value = _kv_branch(channels, value_dim, kv_stride, kv_kernel)
        self.output = nn.Sequential(OrderedDict(proj=conv2d(num_heads * value_dim, out_channels or channels, 1)))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # timm's "ix" weights: Xavier-uniform projections and K/V down-convs (timm MultiQueryAttention2d.init_weights:
        # "appeared to improve stability for mobilenetv4 hybrid").
        for branch in (self.query, self.key, self.value, self.output):
            for m in branch.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.xavier_uniform_(m.weight)

    @property
    def impl(self) -> str:
        return self._impl

    @impl.setter
    def impl(self, value: str) -> None:
        if value not in ATTENTION_IMPLS:
            raise UserError(f"unknown attention impl {value!r}; expected one of {ATTENTION_IMPLS}")
        self._impl = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, _, H, W = x.shape
        h, d, dv = self.num_heads, self.key_dim, self.value_dim
        # q: (B, h*d, H, W) -> (B, h, d, N) -> (B, h*N, d): heads outer, as in the checkpoints' channel layout.
        q = self.query(x).reshape(B, h, d, H * W).transpose(-1, -2).reshape(B, 1, h * H * W, d)
        # k, v: (B, d, H', W') -> (B, 1, M, d). Made contiguous: CPU SDPA falls back to a ~3x slower path on
        # transposed (strided) keys/values (measured, torch 2.14).
        k = self.key(x).flatten(2).transpose(1, 2).unsqueeze(1).contiguous()
        v = self.value(x).flatten(2).transpose(1, 2).unsqueeze(1).contiguous()
        if self._impl == "sdpa":
            o = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        else:
            attn = torch.matmul(q * self.scale, k.transpose(-1, -2)).softmax(dim=-1)
            o = torch.matmul(attn, v)
        # (B, 1, h*N, dv) -> (B, h, N, dv) -> (B, h, dv, N) -> (B, h*dv, H, W)
        o = o.reshape(B, h, H * W, dv).transpose(-1, -2).reshape(B, h * dv, H, W)
        return self.output(o)

    def num_keys(self, height: int, width: int) -> int:
        """Key/value positions for an input of ``height`` x ``width`` (the padded k x k DW conv rounds up)."""
        return -(-height // self.kv_stride) * -(-width // self.kv_stride)

    def attention_macs(self, height: int, width: int) -> int:
        """MACs of the two attention matmuls (Q K^T and A V) for one image at this block's input size."""
        return self.num_heads * height * width * self.num_keys(height, width) * (self.key_dim + self.value_dim)


class MobileMQA(nn.Module):
    """Mobile MQA block (paper §5; timm ``MobileAttention``): BN pre-norm -> multi-query attention -> layer scale
    -> drop path -> + x.

    No activation anywhere in the block and no bias in the attention (TF/timm ``use_bias=False``).
    """

    def __init__(
        self,
        channels: int,
        num_heads: int,
        key_dim: int,
        kv_stride: int = 1,
        kv_kernel: int = 3,
        layer_scale: float | None = None,
        drop_path: float = 0.0,
        attn_impl: str = "sdpa",
    ):
        super().__init__()
        self.has_skip = True
        self.norm = BatchNormAct2d(channels, None)
        self.attn = MultiQueryAttention2d(channels, num_heads, key_dim, key_dim, kv_stride, kv_kernel, impl=attn_impl)
        self.layer_scale = LayerScale2d(channels, layer_scale) if layer_scale is not None else nn.Identity()
        self.drop_path = make_drop_path(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.layer_scale(self.attn(self.norm(x))))
