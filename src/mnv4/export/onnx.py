"""ONNX export of any MobileNetV4 variant (hybrids included), verified in ONNX Runtime.

Pipeline: ``mnv4.deploy`` (BN and layer scale folded) -> ``torch.onnx.export`` -> optional ``onnxslim`` pass ->
``onnx.checker``. The Mobile MQA exports as plain MatMul / Softmax / Reshape / Transpose ops (ONNX Runtime fuses
the scale into ``FusedMatMul``), which every ONNX runtime runs; no custom op, no ``Attention`` contrib op.

Exporter choice: the TorchScript-based exporter (``dynamo=False``) is the default. Both exporters give a correct,
equally fast graph for every variant after simplification (docs/deploy.md has the numbers), but the TorchScript one
exports a model in ~0.5 s instead of 3-9 s and needs no ``onnxscript``; ``exporter="dynamo"`` selects the
``torch.export``-based one (it needs ``onnxscript``), e.g. once the TorchScript exporter is removed from PyTorch.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import UserError
from ..model import MobileNetV4
from ..specs import MIN_INPUT_SIZE
from . import require
from .format import Exportable, ExportFormat, Runner
from .prepare import deployed_for_export, output_names
from .verify import FP32_TOLERANCE, ExportCheck, compare, random_inputs

MIN_OPSET = 17
EXPORTERS = ("torchscript", "dynamo")


@dataclass(frozen=True)
class OnnxExportConfig:
    """How to export: see ``export_onnx``."""

    input_size: tuple[int, int]
    opset: int = 18
    dynamic_batch: bool = True
    dynamic_hw: bool = False
    simplify: bool = True
    exporter: str = "torchscript"
    attn_impl: str = "math"

    def __post_init__(self) -> None:
        if self.opset < MIN_OPSET:
            raise UserError(f"opset must be >= {MIN_OPSET} (LayerNorm-free, but we rely on opset-17 semantics)")
        if self.exporter not in EXPORTERS:
            raise UserError(f"exporter must be one of {EXPORTERS}, got {self.exporter!r}")
        check_input_size(self.input_size)


def check_input_size(size) -> tuple[int, int]:
    if len(size) != 2 or not all(isinstance(s, int) and s >= MIN_INPUT_SIZE for s in size):
        raise UserError(f"input size must be two ints (H, W) >= {MIN_INPUT_SIZE}, got {size!r}")
    return tuple(size)


def export_onnx(
    model: nn.Module,
    path: str | Path,
    *,
    input_size: tuple[int, int] | None = None,
    opset: int = 18,
    dynamic_batch: bool = True,
    dynamic_hw: bool = False,
    simplify: bool = True,
    exporter: str = "torchscript",
    attn_impl: str = "math",
) -> Path:
    """Export ``model`` (a ``MobileNetV4``; deployed first if needed) to an ONNX file at ``path``.

    Args:
        input_size: (H, W) traced; default the variant's native resolution.
        opset: ONNX opset (>= 17).
        dynamic_batch / dynamic_hw: make the batch / spatial dimensions symbolic.
        simplify: run onnxslim (constant folding, shape-op elimination) on the exported graph.
        exporter: ``"torchscript"`` (default) or ``"dynamo"`` (see the module docstring).
        attn_impl: the Mobile MQA form to trace, ``"math"`` (explicit matmul-softmax-matmul) or ``"sdpa"``; both
            export to the same op types, ``"math"`` keeps the scale on the query where ORT fuses it.

    Returns the path written. Input ``input`` (NCHW float32), output ``logits`` (or ``pre_logits`` /
    ``features_<i>``).
    """
    if not isinstance(model, MobileNetV4):
        raise TypeError(f"expected a mnv4 MobileNetV4, got {type(model).__name__}")
    res = input_size or (model.spec.resolution, model.spec.resolution)
    cfg = OnnxExportConfig(tuple(res), opset, dynamic_batch, dynamic_hw, simplify, exporter, attn_impl)
    net = deployed_for_export(model, attn_impl=cfg.attn_impl)
    doc = f"mnv4 {net.spec.name} (BN folded)"
    return export_module_onnx(net, path, cfg, output_names(net), in_chans=net.in_chans, doc=doc)


def export_module_onnx(
    module: nn.Module, path: str | Path, cfg: OnnxExportConfig, outputs: list[str], in_chans: int = 3, doc: str = ""
) -> Path:
    """Export any eval-mode image module with ``cfg``'s settings (also used to export timm's model the same way)."""
    exportable = Exportable(module, torch.zeros(1, in_chans, *cfg.input_size), tuple(outputs), description=doc,
                            dynamic_batch=cfg.dynamic_batch, dynamic_hw=cfg.dynamic_hw, simplify=cfg.simplify)
    return write_onnx(exportable, path, opset=cfg.opset, exporter=cfg.exporter)


def write_onnx(exportable: Exportable, path: str | Path, *, opset: int = 18, exporter: str = "torchscript") -> Path:
    """Write ``exportable`` as an ONNX file: ``torch.onnx.export`` -> onnxslim (when ``exportable.simplify``) ->
    ``onnx.checker``. Its ``dynamic_*`` fields and ``output_axes`` make dimensions symbolic."""
    if opset < MIN_OPSET:
        raise UserError(f"opset must be >= {MIN_OPSET} (LayerNorm-free, but we rely on opset-17 semantics)")
    if exporter not in EXPORTERS:
        raise UserError(f"exporter must be one of {EXPORTERS}, got {exporter!r}")
    onnx = require("onnx")
    require("onnxruntime")  # for verification; fail before the slow part
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module, x, name = exportable.module, exportable.sample, exportable.input_name
    outputs = list(exportable.output_names)
    with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # tracer / deprecation chatter; the result is checked below
        if exporter == "dynamo":
            require("onnxscript")
            dims = {}
            if exportable.dynamic_batch:
                dims[0] = torch.export.Dim("batch", min=1, max=4096)
            if exportable.dynamic_hw:
                dims[2] = torch.export.Dim("height", min=32, max=4096)
                dims[3] = torch.export.Dim("width", min=32, max=4096)
            torch.onnx.export(
                module, (x,), str(path), dynamo=True, opset_version=opset, input_names=[name],
                output_names=outputs, dynamic_shapes=(dims,), external_data=False,
            )
        else:
            dynamic_axes = {n: {0: "batch"} for n in [name, *outputs]} if exportable.dynamic_batch else {}
            if exportable.dynamic_hw:
                dynamic_axes.setdefault(name, {}).update({2: "height", 3: "width"})
            for output, axes in exportable.output_axes.items():
                dynamic_axes.setdefault(output, {}).update(axes)
            torch.onnx.export(
                module, (x,), str(path), dynamo=False, opset_version=opset, input_names=[name],
                output_names=outputs, dynamic_axes=dynamic_axes or None, do_constant_folding=True,
            )
    proto = onnx.load(str(path))
    if exportable.simplify:
        proto = simplify_onnx(proto)
    proto.doc_string = f"{exportable.description} ({exporter} exporter, opset {opset})".lstrip()
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    return path


def simplify_onnx(proto):
    """onnxslim: constant folding, dead/shape-op elimination, no numeric change (falls back to the input if the
    simplified graph does not pass ``onnx.checker``)."""
    onnx = require("onnx")
    onnxslim = require("onnxslim")
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        slim = onnxslim.slim(proto)
    try:
        onnx.checker.check_model(slim)
    except onnx.checker.ValidationError:
        return proto
    return slim


def onnx_session(path: str | Path, threads: int | None = None, optimize: bool = True, spin: bool = True):
    """An ONNX Runtime CPU session (``threads``: intra-op threads; None = ORT's default).

    ``spin=False`` stops ORT's worker threads from busy-waiting after each run: needed when ORT calls are interleaved
    with other engines (PyTorch, LiteRT) on the same cores, which the spinning threads would otherwise slow down.
    """
    ort = require("onnxruntime")
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    if not spin:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def run_session(session, x: np.ndarray) -> list[np.ndarray]:
    return session.run(None, {session.get_inputs()[0].name: np.ascontiguousarray(x, dtype=np.float32)})


def verify_onnx(
    model: nn.Module,
    path: str | Path,
    *,
    input_size: tuple[int, int] | None = None,
    batch_sizes: tuple[int, ...] = (1, 2),
    tolerance: float = FP32_TOLERANCE,
    seed: int = 0,
    inputs: list[torch.Tensor] | None = None,
) -> ExportCheck:
    """Run the ONNX file in ONNX Runtime on random inputs (one per batch size) and compare with ``model``.

    ``model`` is the PyTorch reference (unfolded or deployed); returns an ``ExportCheck`` (``.max_rel_error``,
    ``.ok``, ``.raise_if_failed()``). Batch sizes other than 1 need an export with ``dynamic_batch``. ``inputs``
    replaces the random inputs (int8 models: real images, as random noise lies outside the calibrated ranges).
    """
    res = check_input_size(tuple(input_size or (model.spec.resolution, model.spec.resolution)))
    session = onnx_session(path)
    given = inputs is not None
    inputs = inputs if given else random_inputs(res, batch_sizes, model.in_chans, seed)
    check = compare(model, lambda x: run_session(session, x), inputs, "ONNX", str(path), tolerance)
    check.input_kind = "given inputs" if given else check.input_kind
    return check


class OnnxFormat(ExportFormat):
    """ONNX, run in ONNX Runtime: fp32, or int8 QDQ (``quantize_onnx`` of the fp32 file, ``--ort-int8-weights``)."""

    name, label, suffix = "onnx", "ONNX", ".onnx"
    precisions = ("fp32", "int8")
    dynamic_batch = True
    several_outputs = True
    data_dependent_shapes = True  # the TorchScript exporter writes torchvision's NMS as NonMaxSuppression
    options = ("dynamic_hw", "ort_int8_weights")

    def write(self, exportable, path, cfg, calibration, work) -> str | None:
        if cfg.precision != "int8":
            write_onnx(exportable, path, opset=cfg.opset, exporter=cfg.exporter)
            return None
        from .quantize import ort_int8_settings, quantize_onnx

        fp32 = write_onnx(exportable, work / "fp32.onnx", opset=cfg.opset, exporter=cfg.exporter)
        report = quantize_onnx(fp32, path, calibration.folder, preprocess=calibration.preprocess,
                               num_images=calibration.num_images, settings=ort_int8_settings(cfg.ort_int8_weights))
        return report.summary()

    def runner(self, path: Path) -> Runner:
        session = onnx_session(path)
        return lambda x: run_session(session, x)
