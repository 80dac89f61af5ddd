"""Helpers for equivalence checks (parity with timm, BN folding, exports).

Random-init MobileNetV4 weights make a poor test subject: BN is the identity, the hybrids' layer scale is 1e-5, so
their logits are ~1e-16 and an absolute tolerance proves nothing; and with made-up BN statistics the attention
stays nearly uniform, so even a wrong attention scale goes unnoticed. ``make_nondegenerate`` fixes both: random BN
affine parameters and layer-scale gammas, then BN running statistics measured from forward passes, so eval mode sees
unit-scale activations and the attention is far from uniform.
"""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def make_nondegenerate(
    model: nn.Module,
    seed: int = 0,
    input_size: tuple[int, int] = (128, 128),
    batch_size: int = 8,
    passes: int = 2,
    in_chans: int = 3,
) -> nn.Module:
    """Draw BN weights in [0.2, 0.6], BN biases in [-0.1, 0.1], layer-scale gammas in [0.05, 0.3], then set BN
    running statistics as the cumulative average over ``passes`` train-mode forward passes (momentum=None).

    Works on any module tree with ``nn.BatchNorm2d`` and parameters named ``gamma`` (timm's and ours). Leaves the
    model in eval mode.
    """
    gen = torch.Generator().manual_seed(seed)
    for name, param in model.named_parameters():
        if name.endswith("gamma"):
            param.copy_(torch.empty_like(param).uniform_(0.05, 0.3, generator=gen))
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.weight.copy_(torch.empty_like(bn.weight).uniform_(0.2, 0.6, generator=gen))
        bn.bias.copy_(torch.empty_like(bn.bias).uniform_(-0.1, 0.1, generator=gen))
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average over the calibration passes
    model.train()
    for _ in range(passes):
        model(torch.randn(batch_size, in_chans, *input_size, generator=gen))
    for bn, momentum in zip(bns, momenta, strict=True):
        bn.momentum = momentum
    return model.eval()


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max|actual - expected| / max|expected|: a tolerance relative to the output's scale."""
    scale = expected.abs().max().item()
    if scale == 0.0:
        raise ValueError("the reference output is all zeros: a relative comparison is meaningless")
    return (actual.double() - expected.double()).abs().max().item() / scale
