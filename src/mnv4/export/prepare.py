"""The model every exporter converts: a deployed (BN-folded), fp32, eval-mode copy of a ``MobileNetV4`` with its
Mobile MQA in the form exporters take (``math``: matmul / softmax / reshape, no fused SDPA op)."""

from __future__ import annotations

import torch
from torch import nn

from ..deploy import deploy, is_deployed
from ..errors import UserError
from ..model import MobileNetV4
from .format import Exportable


def deployed_for_export(model: nn.Module, *, classifier_for: str | None = None, attn_impl: str = "math") -> MobileNetV4:
    """``model`` deployed (a copy, unless it already is), fp32, eval mode, attention as ``attn_impl``.

    ``classifier_for``: the format's name when it takes classifiers only (a ``features_only`` model is refused with
    a pointer to ONNX, which exports feature maps too).
    """
    if not isinstance(model, MobileNetV4):
        raise TypeError(f"expected a mnv4 MobileNetV4, got {type(model).__name__}")
    if classifier_for and model.features_only:
        raise UserError(f"{classifier_for} export takes a classifier; features_only models export to ONNX")
    net = model if is_deployed(model) else deploy(model)
    return net.float().eval().set_attention_impl(attn_impl)


def output_names(model: MobileNetV4) -> list[str]:
    if model.features_only:
        return [f"features_{i}" for i in model.out_indices]
    return ["logits" if model.num_classes else "pre_logits"]


def classifier_exportable(
    model: nn.Module, input_size: tuple[int, int], *, classifier_for: str | None = None, dynamic_hw: bool = False
) -> Exportable:
    """A ``MobileNetV4`` as formats write it: deployed (``deployed_for_export``), traced at ``input_size``, input
    ``input``, output ``logits`` (``pre_logits`` / ``features_<i>``), dynamic batch."""
    net = deployed_for_export(model, classifier_for=classifier_for)
    return Exportable(net, torch.zeros(1, net.in_chans, *input_size), tuple(output_names(net)),
                      description=f"mnv4 {net.spec.name} (BN folded)", dynamic_hw=dynamic_hw)
