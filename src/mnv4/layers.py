"""Small building layers shared by the MobileNetV4 blocks.

Module and attribute names follow timm's MobileNetV4 modules (``conv``/``bn``, ``gamma``, ...) so that the
released timm checkpoints load into this package with ``strict=True`` (timm's ``ConvBnAct``, ``EdgeResidual``,
``UniversalInvertedResidual`` and ``MobileAttention`` modules, in ``timm/models/_efficientnet_blocks.py``).

Every module here is written so that ``torch.jit.script`` and ``torch.fx.symbolic_trace`` take it: no ``super()``
calls in ``forward``, no optional submodules (an absent layer is an ``nn.Identity``), no Python-only control flow on
tensor values.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import StochasticDepth

from .errors import UserError

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "relu6": nn.ReLU6, "gelu": nn.GELU}


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None, round_limit: float = 0.9) -> int:
    """Round ``value`` to the nearest multiple of ``divisor`` without dropping more than 10% (MobileNet rule).

    Used for expanded widths (in * expand) and for width multipliers (TF Model Garden ``nn_layers.make_divisible``,
    timm ``make_divisible``).
    """
    min_value = min_value or divisor
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < round_limit * value:
        rounded += divisor
    return rounded


def make_activation(name: str) -> nn.Module:
    if name == "relu":
        return nn.ReLU(inplace=True)
    if name == "relu6":
        return nn.ReLU6(inplace=True)  # TF Model Garden's default activation (its ConvMediumSeg table names none)
    if name == "gelu":
        return nn.GELU()  # exact (erf) GELU, as timm's Hybrid-L
    raise UserError(f"unknown activation {name!r}; expected one of {sorted(ACTIVATIONS)}")


class BatchNormAct2d(nn.BatchNorm2d):
    """BatchNorm2d followed by an optional activation.

    A subclass rather than a wrapper so that its state-dict keys are exactly BatchNorm2d's (``weight``, ``bias``,
    ``running_mean``, ...), as in timm's checkpoints. ``forward`` is BatchNorm2d's, written out: TorchScript does
    not compile ``super().forward``, and FX would trace into BatchNorm2d's input-dimension check (a Python ``if`` on
    a traced value) because this subclass, unlike ``nn.BatchNorm2d``, is not one of FX's leaf modules.
    """

    def __init__(self, num_features: int, act: str | None = None, eps: float = 1e-5, momentum: float | None = 0.1):
        super().__init__(num_features, eps=eps, momentum=momentum)
        self.act = make_activation(act) if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The update rule of torch's _BatchNorm.forward: momentum None = cumulative average over the batches seen.
        average_factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            average_factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        use_batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        keep_running = not self.training or self.track_running_stats
        x = F.batch_norm(
            x,
            self.running_mean if keep_running else None,
            self.running_var if keep_running else None,
            self.weight,
            self.bias,
            use_batch_stats,
            average_factor,
            self.eps,
        )
        return self.act(x)


class BlurPool2d(nn.Module):
    """Anti-aliased stride-2 downsampling: 3x3 binomial blur ([1, 2, 1]/4 outer product), zero padding 1, stride 2.

    timm's ``aa_layer='blurpc'`` (Zhang, "Making Convolutional Networks Shift-Invariant Again", 2019). The filter is
    a non-persistent buffer, so it is not part of the state dict (as in timm).
    """

    def __init__(self, channels: int, stride: int = 2):
        super().__init__()
        self.channels = channels
        self.stride = stride
        taps = torch.tensor([1.0, 2.0, 1.0]) / 4.0
        filt = (taps[:, None] * taps[None, :]).expand(channels, 1, 3, 3).clone()
        self.register_buffer("filt", filt, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.filt.to(x.dtype), stride=self.stride, padding=1, groups=self.channels)


def make_downsample(aa: str | None, channels: int) -> nn.Module:
    """The pooling that follows a stride-1 conv in timm's anti-aliased variants (``conv_aa_*``: 2x2 average pool;
    ``conv_blur_medium``: 3x3 blur pool), in place of the conv's stride."""
    if aa == "avg":
        return nn.AvgPool2d(2)
    if aa == "blurpc":
        return BlurPool2d(channels)
    raise UserError(f"unknown anti-aliasing layer {aa!r}; expected 'avg' or 'blurpc'")


def conv2d(
    in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1, bias: bool = False, dilation: int = 1
) -> nn.Conv2d:
    """A conv with symmetric 'same'-size padding ((k - 1) // 2 each side, times the dilation), as timm trains MNv4
    (TF Model Garden pads 'same', bottom/right on even inputs; timm's weights were trained with the symmetric form).

    ``dilation`` > 1 is the atrous conv of a dense-prediction backbone (``output_stride`` < 32); a 1x1 conv has no
    taps to spread, so it keeps dilation 1 (as TF Model Garden does)."""
    dilation = dilation if kernel > 1 else 1
    return nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=dilation * (kernel - 1) // 2, dilation=dilation,
                     groups=groups, bias=bias)


class ConvNormAct(nn.Module):
    """conv (no bias) -> BN -> optional activation -> optional anti-aliasing downsample.

    With ``aa`` set and stride 2, the conv runs at stride 1 and the pool after the activation does the stride.
    ``dilation``: the conv's (see ``conv2d``).
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel: int,
        stride: int = 1,
        groups: int = 1,
        act: str | None = "relu",
        aa: str | None = None,
        dilation: int = 1,
    ):
        super().__init__()
        use_aa = aa is not None and stride > 1
        self.conv = conv2d(in_ch, out_ch, kernel, 1 if use_aa else stride, groups, dilation=dilation)
        self.bn = BatchNormAct2d(out_ch, act)
        self.aa = make_downsample(aa, out_ch) if use_aa else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.aa(self.bn(self.conv(x)))


class LayerScale2d(nn.Module):
    """Per-channel learnable scale on a residual branch (init 1e-5 in the hybrids; TF ``MNV4LayerScale``, timm
    ``LayerScale2d``)."""

    def __init__(self, channels: int, init_value: float):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((channels,), float(init_value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma.view(1, -1, 1, 1)


def make_drop_path(rate: float) -> nn.Module:
    """Stochastic depth on a residual branch: torchvision's row-wise StochasticDepth (rescales by 1/(1-p))."""
    return StochasticDepth(rate, mode="row") if rate > 0 else nn.Identity()


def init_weights_goog(module: nn.Module) -> None:
    """TF-style initialisation used by timm's EfficientNet builder (``_init_weight_goog``).

    Convs: N(0, sqrt(2 / fan_out)) with fan_out = k*k*out/groups; BN: 1/0; Linear: U(+-1/sqrt(out)), bias 0.
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            bound = 1.0 / math.sqrt(m.weight.size(0))
            nn.init.uniform_(m.weight, -bound, bound)
            nn.init.zeros_(m.bias)
