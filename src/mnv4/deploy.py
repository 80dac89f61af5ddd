"""Inference-time rewriting of a MobileNetV4: BatchNorm folding, layer-scale folding, no drop path / dropout.

``deploy(model)`` returns an eval-mode copy whose logits equal the original's in eval mode (to float rounding) with
fewer modules and fewer ops, ready for ``channels_last`` and for the exporters in ``mnv4.export``:

- every ``conv -> BN`` pair becomes one conv with a bias (the BN module is replaced by its activation);
- UIB: ``pw_proj`` conv -> BN -> layer scale (gamma) becomes one conv: gamma scales the folded weight and bias;
- Mobile MQA: the K/V down-conv BNs fold into their depthwise convs, and the layer scale into ``output.proj``
  (a bias-free 1x1 conv, so ``gamma * W`` is exact). The pre-norm BN stays, as a plain per-channel affine
  ``s * x + t`` (``ChannelAffine``, one elementwise op). Folding it into the consumers' input side is exact in
  algebra for the 1x1 query/key/value convs (``W (s x + t) = (W diag(s)) x + W t``) but not in float32: the residual
  stream entering the deep MQA blocks has a large mean, so ``W diag(s) x`` and ``W t`` cancel and a block's error
  grows from ~1e-7 to ~3e-5 of its output (measured on Hybrid-L); and where key/value start with a zero-padded 3x3
  depthwise down-conv it is not exact even in algebra (the padded border taps would see 0 instead of ``t``);
- the head's ``conv_head -> norm_head`` folds the same way (the pool before it is linear, the BN is after it);
- drop path becomes ``nn.Identity`` and the classifier dropout rate is set to 0.

The deployed model keeps the class, ``forward_features`` / ``forward_head`` / ``forward_intermediates``, feature
info and input checks of the original (it is the same ``MobileNetV4`` object with submodules replaced). It is for
inference: there is no BatchNorm left to train.
"""

from __future__ import annotations

import copy
from typing import TypeVar

import torch
from torch import nn

from .blocks import ConvBlock, FusedIB, MobileMQA, MultiQueryAttention2d, UniversalInvertedBottleneck
from .layers import BatchNormAct2d, ConvNormAct, LayerScale2d

# deploy() works on a MobileNetV4 and returns the same type; the model module imports this one (``model.fuse``), so
# this module knows the model by its parts (conv_stem, bn1, blocks, head) rather than by importing its class.
Model = TypeVar("Model", bound=nn.Module)
MODEL_PARTS = ("conv_stem", "bn1", "blocks", "features_only")


class ChannelAffine(nn.Module):
    """``x * scale + shift`` per channel on NCHW maps: an eval-mode BatchNorm without the statistics bookkeeping."""

    def __init__(self, scale: torch.Tensor, shift: torch.Tensor):
        super().__init__()
        self.scale = nn.Parameter(scale.detach().clone().view(1, -1, 1, 1))
        self.shift = nn.Parameter(shift.detach().clone().view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift  # not addcmul: Core ML has no converter for it


def bn_affine(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """The eval-mode BatchNorm as ``(scale, shift)`` with ``bn(x) = scale * x + shift`` per channel (float64)."""
    var, mean = bn.running_var.double(), bn.running_mean.double()
    weight = bn.weight.double() if bn.weight is not None else torch.ones_like(var)
    bias = bn.bias.double() if bn.bias is not None else torch.zeros_like(var)
    scale = weight / torch.sqrt(var + bn.eps)
    return scale, bias - mean * scale


def _set_conv(conv: nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    """Write float64 folded values back into ``conv`` in its own dtype/device (adding a bias if it had none)."""
    ref = conv.weight
    conv.weight = nn.Parameter(weight.to(ref.dtype).to(ref.device), requires_grad=ref.requires_grad)
    if bias is not None:
        conv.bias = nn.Parameter(bias.to(ref.dtype).to(ref.device), requires_grad=ref.requires_grad)


def _conv_params(conv: nn.Conv2d) -> tuple[torch.Tensor, torch.Tensor]:
    weight = conv.weight.double()
    bias = conv.bias.double() if conv.bias is not None else weight.new_zeros(conv.out_channels)
    return weight, bias


def fold_output_affine(conv: nn.Conv2d, scale: torch.Tensor, shift: torch.Tensor | None = None) -> None:
    """``conv`` followed by ``y -> scale * y + shift`` per output channel, as one conv (exact)."""
    weight, bias = _conv_params(conv)
    scale = scale.double()
    bias = bias * scale + (shift.double() if shift is not None else 0.0)
    _set_conv(conv, weight * scale.view(-1, 1, 1, 1), bias)


def fold_bn_into_conv(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """``bn(conv(x))`` as one conv (exact in eval mode)."""
    fold_output_affine(conv, *bn_affine(bn))


def _bn_activation(bn: BatchNormAct2d | nn.BatchNorm2d) -> nn.Module:
    """What is left of a BN(+act) module once its affine part moved into a conv: its activation, or Identity."""
    return getattr(bn, "act", None) or nn.Identity()


def _layer_scale_gamma(module: nn.Module) -> torch.Tensor | None:
    return module.gamma.detach().double() if isinstance(module, LayerScale2d) else None


@torch.no_grad()
def _fold_conv_norm_act(block: ConvNormAct) -> None:
    fold_bn_into_conv(block.conv, block.bn)
    block.bn = _bn_activation(block.bn)


@torch.no_grad()
def _fold_uib(block: UniversalInvertedBottleneck) -> None:
    for name in ("dw_start", "pw_exp", "dw_mid"):
        part = getattr(block, name)
        if isinstance(part, ConvNormAct):
            _fold_conv_norm_act(part)
    # pw_proj has no activation, so BN then layer scale are two per-channel affines after one conv: one fold.
    proj = block.pw_proj
    scale, shift = bn_affine(proj.bn)
    gamma = _layer_scale_gamma(block.layer_scale)
    if gamma is not None:
        scale, shift = scale * gamma, shift * gamma
        block.layer_scale = nn.Identity()
    fold_output_affine(proj.conv, scale, shift)
    proj.bn = _bn_activation(proj.bn)
    block.drop_path = nn.Identity()


@torch.no_grad()
def _fold_mqa(block: MobileMQA) -> None:
    attn: MultiQueryAttention2d = block.attn
    for branch in (attn.key, attn.value):
        if "down_conv" in branch._modules:
            fold_bn_into_conv(branch.down_conv, branch.norm)
            del branch._modules["norm"]
    gamma = _layer_scale_gamma(block.layer_scale)
    if gamma is not None:  # output.proj is a bias-free 1x1 conv and nothing follows it but the gamma
        fold_output_affine(attn.output.proj, gamma)
        block.layer_scale = nn.Identity()
    # The pre-norm stays as one per-channel affine (see the module docstring for why it is not folded into q/k/v).
    scale, shift = bn_affine(block.norm)
    dtype = block.norm.weight.dtype
    block.norm = ChannelAffine(scale.to(dtype), shift.to(dtype))
    block.drop_path = nn.Identity()


@torch.no_grad()
def _fold_block(block: nn.Module) -> None:
    if isinstance(block, ConvBlock):
        fold_bn_into_conv(block.conv, block.bn1)
        block.bn1 = _bn_activation(block.bn1)
    elif isinstance(block, FusedIB):
        fold_bn_into_conv(block.conv_exp, block.bn1)
        block.bn1 = _bn_activation(block.bn1)
        fold_bn_into_conv(block.conv_pwl, block.bn2)
        block.bn2 = _bn_activation(block.bn2)
        block.drop_path = nn.Identity()
    elif isinstance(block, UniversalInvertedBottleneck):
        _fold_uib(block)
    elif isinstance(block, MobileMQA):
        _fold_mqa(block)
    else:
        raise TypeError(f"deploy() does not know how to fold a {type(block).__name__}")


def is_deployed(model: nn.Module) -> bool:
    """True when ``model`` has no BatchNorm left (already folded)."""
    return not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@torch.no_grad()
def deploy(model: Model, *, channels_last: bool = False, inplace: bool = False) -> Model:
    """An inference copy of ``model`` with every BatchNorm and layer scale folded away (see the module docstring).

    Args:
        model: a ``MobileNetV4`` (classifier or ``features_only``); its BN running statistics are what gets folded,
            so call it on a trained (or ``make_nondegenerate``) model.
        channels_last: also convert the weights to ``torch.channels_last`` (feed NHWC-strided inputs for speed on
            CPU; NCHW-contiguous inputs still work).
        inplace: rewrite ``model`` itself instead of a deep copy.

    Returns the deployed model in eval mode. Calling it on an already deployed model is a no-op (apart from
    ``channels_last``).
    """
    if not (isinstance(model, nn.Module) and all(hasattr(model, part) for part in MODEL_PARTS)):
        raise TypeError(f"deploy() takes a mnv4 MobileNetV4, got {type(model).__name__}")
    if not inplace:
        model = copy.deepcopy(model)
    model.eval()
    if not is_deployed(model):
        fold_bn_into_conv(model.conv_stem, model.bn1)
        model.bn1 = _bn_activation(model.bn1)
        for stage in model.blocks:
            for block in stage:
                _fold_block(block)
        if not model.features_only:
            # global_pool -> conv_head (1x1, no bias) -> norm_head: the BN is on the conv's output, so it folds.
            # (A model pruned by prune_intermediate_layers has no head left: Identity modules.)
            if isinstance(model.norm_head, nn.BatchNorm2d):
                fold_bn_into_conv(model.conv_head, model.norm_head)
                model.norm_head = _bn_activation(model.norm_head)
            model.drop_rate = 0.0
    for m in model.modules():
        if isinstance(m, nn.Dropout):  # none in MobileNetV4 today; cheap insurance for subclasses
            m.p = 0.0
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def count_modules(model: nn.Module) -> int:
    """Number of modules in ``model`` (what ``deploy`` reduces)."""
    return sum(1 for _ in model.modules())
