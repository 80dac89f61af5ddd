"""Quantization-aware training (QAT): fine-tune fp32 weights with fake-quant, then export int8 ExecuTorch and ONNX.

Post-training quantization (``mnv4.export.quantize``) rounds a trained model once; QAT lets the weights adapt to the
rounding. The flow is PT2E's, with the very quantizer the ExecuTorch exporter uses
(``mnv4.export.executorch.xnnpack_quantizer(qat=True)``), so the QAT file and a PTQ file have the same int8 ops:

1. ``prepare_qat``: the model in training mode (BatchNorm kept: it is folded into the convs at conversion, after
   training) -> ``torch.export`` with a dynamic batch -> ``prepare_qat_pt2e``: fake-quant on weights (per channel)
   and activations; the conv-BN pairs are rewritten so BN statistics keep updating while the conv sees the weights
   it will have once BN is folded and rounded;
2. fine-tune the prepared graph with ``mnv4.train`` (``train(cfg, model=prepared)``: the usual loop, a low LR and a
   few epochs); ``train()`` / ``eval()`` on it switch BN and dropout as on an eager model;
3. ``convert_qat``: fake-quant becomes quantize/dequantize pairs with the learned scales, BN is folded;
4. ``export_qat``: the converted graph lowered to ExecuTorch/XNNPACK (``.pte``) and exported to ONNX with QDQ pairs
   (``.onnx``, ONNX Runtime fuses them into QLinearConv and friends). The quantizer's tensors are s8 (symmetric
   weights, asymmetric activations); the ONNX file gets them as u8, as post-training quantization writes its files
   (``OrtQuantSettings``' default): ONNX Runtime's int8 convolutions on x86 CPUs without VNNI (AVX2, AVX-512
   without VNNI) multiply u8 x s8 pairs into 16-bit sums that saturate with full-range 8-bit s8 weights (measured
   here on an AVX2 CPU: 41% of the logit scale off with 8-bit s8 weights, against 4-7% in ORT's unfused reference
   kernels), while its U8U8 kernels do not. The shift to u8 is exact (``to_u8``), where the 7-bit re-rounding used
   before (``FAST_ORT_INT8``'s trade, still available) coarsens the learned grid.

``train_qat(cfg)`` runs 1-4 for ``mnv4 train --qat``.
"""

from __future__ import annotations

import copy
import logging
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..errors import UserError
from ..model import MobileNetV4
from . import require

if TYPE_CHECKING:
    from .quantize import OrtQuantSettings

log = logging.getLogger("mnv4")


def prepare_qat(model: MobileNetV4, input_size: tuple[int, int]) -> torch.fx.GraphModule:
    """The fake-quant training graph of ``model`` (fp32 weights, not deployed: BN stays until conversion) for
    inputs of ``input_size`` and any batch size."""
    require("torchao")
    from torchao.quantization.pt2e import allow_exported_model_train_eval
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    from .executorch import xnnpack_quantizer

    if not isinstance(model, MobileNetV4):
        raise TypeError(f"expected a mnv4 MobileNetV4, got {type(model).__name__}")
    if model.features_only:
        raise UserError("quantization-aware training takes a classifier")
    net = copy.deepcopy(model).float().set_attention_impl("math").train()
    for bn in net.modules():  # no step counter: it would stay in the int8 graph as 46 ops outside the delegate
        if isinstance(bn, nn.modules.batchnorm._BatchNorm):
            bn.momentum = 0.1 if bn.momentum is None else bn.momentum  # (None would need the counter)
            bn.num_batches_tracked = None
    sample = torch.randn(2, net.in_chans, *input_size)
    batch = torch.export.Dim("batch", min=1, max=65536)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = torch.export.export(net, (sample,), dynamic_shapes=({0: batch},)).module()
        prepared = prepare_qat_pt2e(graph, xnnpack_quantizer(qat=True))
    allow_exported_model_train_eval(prepared)
    prepared.register_state_dict_post_hook(_unshare_tensors)
    # what the training loop and the exporters read off a MobileNetV4
    prepared.spec, prepared.num_classes, prepared.in_chans = model.spec, model.num_classes, model.in_chans
    prepared.qat_input_size = tuple(input_size)
    return prepared


def _unshare_tensors(module, state_dict, prefix, local_metadata) -> None:
    """State-dict hook: ops that must share quantization parameters (a pool's input and output) share one observer,
    so its tensors appear under two names; safetensors refuses shared memory, so the second name gets a copy
    (loading writes the same values into the one observer twice)."""
    seen: set[int] = set()
    for key, value in state_dict.items():
        if isinstance(value, torch.Tensor) and value.numel():
            ptr = value.untyped_storage().data_ptr()
            if ptr in seen:
                state_dict[key] = value.clone()
            seen.add(ptr)


def float_weights(prepared: torch.fx.GraphModule, model: MobileNetV4) -> dict[str, torch.Tensor]:
    """The fine-tuned fp32 weights of a ``prepare_qat`` graph under ``model``'s names (BN kept unfolded), loadable
    with ``create_model(name, pretrained=FILE)``: what QAT did to the float model, without the observers."""
    ours = prepared.state_dict()
    weights = {}
    for key, value in model.state_dict().items():
        if key in ours:
            weights[key] = ours[key].detach().clone().contiguous()
        elif key.endswith("num_batches_tracked"):  # removed for export (see prepare_qat)
            weights[key] = value.detach().clone()
        else:
            raise KeyError(f"the QAT graph has no tensor for {key}")
    return weights


def convert_qat(prepared: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """The int8 graph of a fine-tuned ``prepare_qat`` graph: fake-quant -> quantize/dequantize pairs with the learned
    scales, BN folded into the convs (``prepared`` itself is left as it was)."""
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    graph = copy.deepcopy(prepared)
    move_exported_model_to_eval(graph)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        converted = convert_pt2e(graph)
    for name in ("spec", "num_classes", "in_chans", "qat_input_size"):
        setattr(converted, name, getattr(prepared, name))
    return converted


@dataclass(frozen=True)
class QATFiles:
    executorch: Path  # int8 .pte (XNNPACK)
    onnx: Path  # int8 QDQ .onnx (ONNX Runtime)


def export_qat(converted: torch.fx.GraphModule, out_dir: str | Path, stem: str = "model_int8") -> QATFiles:
    """Write the converted QAT graph as ``<stem>.pte`` (ExecuTorch, XNNPACK, batch 1) and ``<stem>.onnx`` (QDQ,
    dynamic batch) into ``out_dir``."""
    from .executorch import lower_to_executorch

    out_dir = Path(out_dir)
    sample = torch.zeros(1, converted.in_chans, *converted.qat_input_size)
    pte = lower_to_executorch(converted, (sample,), out_dir / f"{stem}.pte")
    return QATFiles(pte, export_qdq_onnx(converted, sample, out_dir / f"{stem}.onnx"))


def export_qdq_onnx(converted: torch.fx.GraphModule, sample: torch.Tensor, path: str | Path,
                    settings: OrtQuantSettings | None = None) -> Path:
    """A converted PT2E graph as ONNX: its quantize/dequantize ops become QuantizeLinear/DequantizeLinear pairs
    (the ``torch.export``-based exporter; onnxscript), which ONNX Runtime fuses into int8 kernels. ``settings``
    (``mnv4.export.quantize.OrtQuantSettings``, default as post-training quantization: u8 activations and u8
    weights) picks ORT's kernels as it does for ``quantize_onnx``: ``activations="u8"`` / ``weights="u8"`` shift
    the graph's s8 tensors to u8 (exact: ``to_u8``); ``weights="s8"`` with ``reduce_range`` re-rounds them to 7 bits
    (``FAST_ORT_INT8``); ``weights="s8"`` alone keeps them as trained."""
    from .quantize import OrtQuantSettings

    onnx = require("onnx")
    require("onnxscript")
    import contextlib
    import io

    settings = settings or OrtQuantSettings()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    batch = torch.export.Dim("batch", min=1, max=4096)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(converted, (sample,), str(path), dynamo=True, input_names=["input"],
                          output_names=["logits"], dynamic_shapes=({0: batch},), external_data=False)
    proto = onnx.load(str(path))
    if settings.weights == "s8" and settings.reduce_range:
        reduce_weight_bits(proto, 7)
    to_u8(proto, activations=settings.activations == "u8", weights=settings.weights == "u8")
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    return path


def to_u8(proto, *, activations: bool = True, weights: bool = True) -> int:
    """Shift the graph's int8 quantized tensors to uint8: ``q + 128`` with zero point ``z + 128`` dequantizes to the
    same ``(q - z) * scale``, so the values do not change, only which ONNX Runtime kernels run them (u8 activations
    with u8 weights: the U8U8 kernels post-training quantization uses, which do not saturate on x86 without VNNI).
    ``weights``: the constant inputs of DequantizeLinear ops (and their zero points); ``activations``: every other
    QuantizeLinear / DequantizeLinear zero point. Returns how many tensors were shifted."""
    import numpy as np
    from onnx import numpy_helper

    graph = proto.graph
    tensors = {t.name: t for t in graph.initializer}
    tensors.update({n.output[0]: n.attribute[0].t for n in graph.node if n.op_type == "Constant"})
    shifted: set[str] = set()

    def shift(name: str) -> None:
        tensor = tensors.get(name)
        if name in shifted or tensor is None:
            return
        values = numpy_helper.to_array(tensor)
        if values.dtype != np.int8:
            return
        tensor.CopyFrom(numpy_helper.from_array((values.astype(np.int16) + 128).astype(np.uint8), tensor.name))
        shifted.add(name)

    for node in list(graph.node):
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        is_weight = node.op_type == "DequantizeLinear" and node.input[0] in tensors
        if not (weights if is_weight else activations):
            continue
        if is_weight:
            if len(node.input) < 3 or not node.input[2]:  # no zero point: 0 of the input's type, u8 needs 128
                scale = numpy_helper.to_array(tensors[node.input[1]])
                zero = numpy_helper.from_array(np.zeros(scale.shape, np.int8), f"{node.input[0]}_zero_point")
                graph.initializer.append(zero)
                tensors[zero.name] = graph.initializer[-1]
                del node.input[2:]
                node.input.extend([""] * (2 - len(node.input)) + [zero.name])
            shift(node.input[0])
        if len(node.input) > 2 and node.input[2]:
            shift(node.input[2])
    del graph.value_info[:]  # intermediate types the exporter recorded (int8); ORT infers them again
    return len(shifted)


def reduce_weight_bits(proto, bits: int) -> int:
    """Re-round the int8 weights of every DequantizeLinear that feeds a Conv / Gemm to ``bits`` bits (the scale grows
    by the same factor, so the float weights change by at most half a new step); returns how many were changed."""
    import numpy as np
    from onnx import numpy_helper

    factor = 2 ** (8 - bits)
    tensors = {t.name: t for t in proto.graph.initializer}
    tensors.update({n.output[0]: n.attribute[0].t for n in proto.graph.node if n.op_type == "Constant"})
    consumers = {i for n in proto.graph.node if n.op_type in ("Conv", "Gemm", "MatMul") for i in n.input}
    changed = 0
    for node in proto.graph.node:
        if node.op_type != "DequantizeLinear" or node.output[0] not in consumers or node.input[0] not in tensors:
            continue
        q, scale = tensors[node.input[0]], tensors.get(node.input[1])
        values = numpy_helper.to_array(q)
        if values.dtype != np.int8 or scale is None or values.ndim < 2:
            continue
        limit = 2 ** (bits - 1) - 1
        rounded = np.clip(np.round(values.astype(np.float32) / factor), -limit, limit).astype(np.int8)
        q.CopyFrom(numpy_helper.from_array(rounded, q.name))
        scale.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(scale) * factor, scale.name))
        changed += 1
    return changed


@dataclass(frozen=True)
class QATResult:
    train: object  # mnv4.train's TrainResult of the fine-tuning run
    files: QATFiles
    converted: torch.fx.GraphModule  # the int8 graph the files were written from
    float_weights: Path  # the fine-tuned fp32 weights (model_qat_fp32.safetensors)


def train_qat(cfg) -> QATResult:
    """``mnv4 train --qat``: fine-tune ``cfg.pretrained`` (fp32 weights: a file or the tag's) with fake-quant on
    ``cfg.data`` through ``mnv4.train``, then write ``model_int8.pte`` and ``model_int8.onnx`` into ``cfg.out``, and
    the fine-tuned fp32 weights as ``model_qat_fp32.safetensors`` (the training loop's own ``model.safetensors``
    holds the fake-quant graph's state, for ``--resume``).

    The EMA is off (averaging fake-quant observers is meaningless) and ``torch.compile`` too; drop path and dropout
    are not used (a fine-tuning run of a few epochs).
    """
    from ..factory import create_model
    from ..train import train
    from .data import scan_folder

    if not cfg.pretrained:
        raise UserError("--qat fine-tunes trained fp32 weights: pass --pretrained FILE (or --pretrained true for the "
                        "tag's released weights)")
    if cfg.compile:
        raise UserError("--qat does not run with --compile (the fake-quant graph is already an exported program)")
    num_classes = len(scan_folder(Path(cfg.data) / "train").classes)
    model = create_model(cfg.model, pretrained=cfg.pretrained, num_classes=num_classes, attn_impl="math")
    size = cfg.image_size or model.spec.resolution
    if cfg.ema_decay:
        log.info("--qat: EMA off (its average of fake-quant observers would be meaningless)")
    cfg = replace(cfg, image_size=size, ema_decay=None, dropout=0.0, drop_path=0.0, channels_last=False, compile=False)
    prepared = prepare_qat(model, (size, size))
    log.info("QAT: %s with fake-quant (XNNPACK quantizer, per-channel int8 weights, int8 activations) at %d px",
             cfg.model, size)
    result = train(cfg, model=prepared)
    from safetensors.torch import save_file

    converted = convert_qat(prepared)
    files = export_qat(converted, cfg.out)
    fp32 = Path(cfg.out) / "model_qat_fp32.safetensors"
    save_file(float_weights(prepared, model), str(fp32), metadata={"model": cfg.model, "num_classes": str(num_classes)})
    log.info("QAT int8 files: %s, %s; fine-tuned fp32 weights: %s", files.executorch, files.onnx, fp32)
    return QATResult(result, files, converted, fp32)
