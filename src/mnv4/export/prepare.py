"""The model every exporter converts: a deployed (BN-folded), fp32, eval-mode copy of a ``MobileNetV4`` with its
Mobile MQA in the form exporters take (``math``: matmul / softmax / reshape, no fused SDPA op)."""

from __future__ import annotations

from torch import nn

from ..deploy import deploy, is_deployed
from ..errors import UserError
from ..model import MobileNetV4


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
