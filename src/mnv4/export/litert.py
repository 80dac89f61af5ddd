"""LiteRT (TFLite) export through ``litert-torch`` (the successor of ai-edge-torch), verified in ``ai-edge-litert``.

fp32: ``litert_torch.convert`` of the deployed model (BN folded; Mobile MQA in its ``math`` form, which lowers to
BATCH_MATMUL / SOFTMAX). fp16: the fp32 flatbuffer with its float weights cast to fp16 by ``ai-edge-quantizer``
(``FLOAT_CASTING`` weight-only recipe: half the size, fp32 compute after dequantisation, the GPU delegate runs it in
fp16). int8: ``mnv4.export.quantize.export_litert_int8``. Input and output stay float32 NCHW, as in PyTorch.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import require
from .format import Exportable, ExportFormat, Runner
from .prepare import classifier_exportable
from .verify import FP16_TOLERANCE, FP32_TOLERANCE, ExportCheck, compare, random_inputs


def convert_quiet(module: nn.Module, sample: tuple[torch.Tensor, ...], out_path: str | Path, **kwargs) -> Path:
    """``litert_torch.convert(...).export(out_path)`` without its progress chatter on stdout."""
    litert_torch = require("litert_torch")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
        warnings.simplefilter("ignore")
        edge = litert_torch.convert(module, sample, **kwargs)
        edge.export(str(out_path))
    return out_path


def cast_weights_fp16(fp32_path: str | Path, out_path: str | Path) -> Path:
    """fp16 weights (ai-edge-quantizer FLOAT_CASTING, weight-only, every supported op)."""
    require("ai_edge_quantizer")
    from ai_edge_quantizer import qtyping
    from ai_edge_quantizer import quantizer as aeq
    from ai_edge_quantizer.algorithm_manager import AlgorithmName

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        q = aeq.Quantizer(str(fp32_path))
        q.add_weight_only_config(
            regex=".*", operation_name=qtyping.TFLOperationName.ALL_SUPPORTED, num_bits=16,
            algorithm_key=AlgorithmName.FLOAT_CASTING,
        )
        q.quantize().export_model(str(out_path), overwrite=True)
    return Path(out_path)


def export_litert(
    model: nn.Module, path: str | Path, *, input_size: tuple[int, int] | None = None, fp16: bool = False
) -> Path:
    """Export a ``MobileNetV4`` classifier to a ``.tflite`` file (fixed batch 1, float32 NCHW input ``(1, C, H, W)``).

    ``fp16=True`` stores the weights in fp16 (half the file size).
    """
    size = tuple(input_size or (model.spec.resolution, model.spec.resolution))
    return write_litert(classifier_exportable(model, size, classifier_for="LiteRT"), path, fp16=fp16)


def write_litert(exportable: Exportable, path: str | Path, *, fp16: bool = False) -> Path:
    """``exportable`` as a ``.tflite`` file (batch 1), fp32 or with fp16 weights."""
    require("ai_edge_litert")
    sample, path = (exportable.sample,), Path(path)
    if not fp16:
        return convert_quiet(exportable.module, sample, path)
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = convert_quiet(exportable.module, sample, Path(tmp) / "fp32.tflite")
        return cast_weights_fp16(fp32, path)


class LiteRTRunner:
    """Runs a ``.tflite`` file in the ai-edge-litert interpreter (XNNPACK on CPU); call with an NCHW float array."""

    def __init__(self, path: str | Path, threads: int | None = None):
        interpreter_mod = require("ai_edge_litert.interpreter")
        with contextlib.redirect_stdout(io.StringIO()):
            self.interpreter = interpreter_mod.Interpreter(model_path=str(path), num_threads=threads or os.cpu_count())
            self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]
        self.outputs = self.interpreter.get_output_details()

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.input["shape"])

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        """One sample at a time (the file has batch 1); a larger batch is run image by image."""
        results = []
        for sample in np.asarray(x, dtype=np.float32):
            self.interpreter.set_tensor(self.input["index"], _quantize(sample[None], self.input))
            self.interpreter.invoke()
            results.append([_dequantize(self.interpreter.get_tensor(o["index"]), o) for o in self.outputs])
        return [np.concatenate([r[i] for r in results]) for i in range(len(self.outputs))]


def _quantize(x: np.ndarray, detail: dict) -> np.ndarray:
    """float -> the tensor's integer type with its (scale, zero point); float tensors pass through."""
    dtype = detail["dtype"]
    if np.issubdtype(dtype, np.floating):
        return x.astype(dtype)
    scale, zero = detail["quantization"]
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale) + zero, info.min, info.max).astype(dtype)


def _dequantize(y: np.ndarray, detail: dict) -> np.ndarray:
    if np.issubdtype(y.dtype, np.floating):
        return y.astype(np.float32).copy()
    scale, zero = detail["quantization"]
    return ((y.astype(np.float32) - zero) * scale).astype(np.float32)


def op_counts(path: str | Path) -> dict[str, int]:
    """How many ops of each kind the flatbuffer holds (e.g. to check int8 kernels or the attention ops)."""
    runner = LiteRTRunner(path, threads=1)
    counts: dict[str, int] = {}
    for op in runner.interpreter._get_ops_details():  # the interpreter's only op listing
        counts[op["op_name"]] = counts.get(op["op_name"], 0) + 1
    return counts


def verify_litert(
    model: nn.Module,
    path: str | Path,
    *,
    num_inputs: int = 2,
    tolerance: float | None = None,
    fp16: bool = False,
    seed: int = 0,
    inputs: list[torch.Tensor] | None = None,
) -> ExportCheck:
    """Run the ``.tflite`` file on ``num_inputs`` random inputs and compare with the PyTorch ``model``."""
    runner = LiteRTRunner(path)
    _, chans, h, w = runner.input_shape
    given = inputs is not None
    if not given:  # int8 files: pass real images, random noise lies outside the calibrated ranges
        inputs = random_inputs((h, w), [1] * num_inputs, chans, seed)
    tol = tolerance if tolerance is not None else (FP16_TOLERANCE if fp16 else FP32_TOLERANCE)
    check = compare(model, runner, inputs, "LiteRT fp16" if fp16 else "LiteRT", str(path), tol)
    check.input_kind = "given inputs" if given else check.input_kind
    return check


class LiteRTFormat(ExportFormat):
    """LiteRT (TFLite) flatbuffer, run in the ai-edge-litert interpreter: fp32, fp16 weights, or int8 (PT2E)."""

    name, label, suffix = "tflite", "LiteRT", ".tflite"
    precisions = ("fp32", "fp16", "int8")

    def write(self, exportable, path, cfg, calibration, work) -> str | None:
        if cfg.precision == "int8":
            from .quantize import litert_int8

            return litert_int8(exportable, path, calibration).summary()
        write_litert(exportable, path, fp16=cfg.precision == "fp16")
        return None

    def runner(self, path: Path) -> Runner:
        return LiteRTRunner(path)
