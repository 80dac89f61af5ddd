"""Counting: parameters, and per-layer MACs and tensor sizes (the input of the roofline model, paper §3 and App. F).

What is counted as MACs (multiply-accumulates, one per multiply-add; 1 MAC = 2 FLOPs), and only this:
- every ``nn.Conv2d``: output elements x (input channels / groups) x kernel height x kernel width;
- the fixed 3x3 depthwise blur of ``BlurPool2d`` (the 'blurpc' anti-aliased variant) like any depthwise conv;
- every ``nn.Linear``: output elements x input features;
- the two attention matmuls of each Mobile MQA block: Q K^T and softmax(.) V, i.e. heads x N x M x (key dim + value
  dim) for N query positions and M key/value positions.
BatchNorm, activations, pooling, softmax, residual adds and layer scale are not counted (as in the paper and timm).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .blocks import MultiQueryAttention2d
from .layers import BlurPool2d


@dataclass(frozen=True)
class LayerProfile:
    """One counted layer for a single image: MACs and element counts of its weights, input and output."""

    name: str
    kind: str  # 'conv', 'dwconv', 'linear' or 'attention'
    macs: int
    weight_elems: int
    input_elems: int
    output_elems: int
    shape: str  # e.g. '3x3 dw 640 @16x16' -- for tables


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


@torch.no_grad()
def profile_layers(model: nn.Module, input_size: tuple[int, int], in_chans: int | None = None) -> list[LayerProfile]:
    """Run one image of ``input_size`` (H, W) through ``model`` in eval mode and record every counted layer."""
    in_chans = in_chans or getattr(model, "in_chans", 3)
    records: list[LayerProfile] = []
    hooks = []

    def conv_hook(name: str):
        def hook(m: nn.Conv2d, inputs, output):
            x = inputs[0]
            k = m.kernel_size[0] * m.kernel_size[1]
            per_out = m.in_channels // m.groups * k
            depthwise = m.groups == m.in_channels and m.groups > 1
            records.append(
                LayerProfile(
                    name,
                    "dwconv" if depthwise else "conv",
                    output[0].numel() * per_out,
                    m.weight.numel() + (m.bias.numel() if m.bias is not None else 0),
                    x[0].numel(),
                    output[0].numel(),
                    f"{m.kernel_size[0]}x{m.kernel_size[1]}{' dw' if depthwise else ''} "
                    f"{m.in_channels}->{m.out_channels} s{m.stride[0]} @{x.shape[-2]}x{x.shape[-1]}",
                )
            )

        return hook

    def blur_hook(name: str):
        def hook(m: BlurPool2d, inputs, output):
            x = inputs[0]
            records.append(
                LayerProfile(
                    name, "dwconv", output[0].numel() * 9, 0, x[0].numel(), output[0].numel(),
                    f"blur 3x3 dw {m.channels} s{m.stride} @{x.shape[-2]}x{x.shape[-1]}",
                )
            )

        return hook

    def linear_hook(name: str):
        def hook(m: nn.Linear, inputs, output):
            records.append(
                LayerProfile(
                    name, "linear", output[0].numel() * m.in_features,
                    m.weight.numel() + (m.bias.numel() if m.bias is not None else 0),
                    inputs[0][0].numel(), output[0].numel(), f"linear {m.in_features}->{m.out_features}",
                )
            )

        return hook

    def attention_hook(name: str):
        def hook(m: MultiQueryAttention2d, inputs, output):
            H, W = inputs[0].shape[-2:]
            n = H * W
            keys = m.num_keys(H, W)
            # Reads Q (h*N*d), K (M*d), V (M*dv); writes the attention output (h*N*dv).
            records.append(
                LayerProfile(
                    f"{name}.matmuls", "attention", m.attention_macs(H, W), 0,
                    m.num_heads * n * m.key_dim + keys * (m.key_dim + m.value_dim),
                    m.num_heads * n * m.value_dim,
                    f"MQA {m.num_heads}h x d{m.key_dim}, {n} queries x {keys} keys",
                )
            )

        return hook

    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(conv_hook(name)))
        elif isinstance(m, BlurPool2d):
            hooks.append(m.register_forward_hook(blur_hook(name)))
        elif isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(linear_hook(name)))
        elif isinstance(m, MultiQueryAttention2d):
            hooks.append(m.register_forward_hook(attention_hook(name)))
    was_training = model.training
    model.eval()
    try:
        param = next(model.parameters())
        model(torch.zeros(1, in_chans, *input_size, device=param.device, dtype=param.dtype))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return records


def count_macs(model: nn.Module, input_size: tuple[int, int]) -> int:
    """MACs for one image (convs + linears + attention matmuls; see the module docstring)."""
    return sum(r.macs for r in profile_layers(model, input_size))
