"""int8 post-training quantization: ONNX Runtime static QDQ, LiteRT int8 and ExecuTorch int8 (both PT2E), with
accuracy checks.

Every path calibrates on images preprocessed exactly as the model's tag is evaluated
(``mnv4.export.data.Preprocess.for_model``): int8 ranges measured on another distribution than the one the model sees
at evaluation clip or waste the int8 grid.

ONNX Runtime: ``quantize_static`` in QDQ format, per-channel symmetric 8-bit weights (u8: ``OrtQuantSettings``),
uint8 activations (the x86 / ARM fast path: ORT fuses each DequantizeLinear -> Conv -> QuantizeLinear into a
QLinearConv), MinMax calibration on a folder of images. Everything except the graph input and the final logits
runs in int8, the Mobile MQA matmuls included.

LiteRT: ``litert_torch``'s PT2E path: ``torch.export`` -> ``prepare_pt2e`` with its symmetric per-channel
quantizer -> calibration forward passes -> ``convert_pt2e`` -> ``litert_torch.convert``: int8 kernels, and int8
input/output tensors, which ``mnv4.export.litert.LiteRTRunner`` (de)quantizes with the file's scale/zero point.

ExecuTorch: the same PT2E steps with ExecuTorch's ``XNNPACKQuantizer`` (``mnv4.export.executorch``), lowered to the
XNNPACK delegate; float32 input and output.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import UserError
from . import require
from .data import DecodeError, Preprocess, calibration_images, load_batch, load_images, scan_folder
from .format import Calibration, Exportable
from .prepare import classifier_exportable


@dataclass(frozen=True)
class CalibrationReport:
    """What a quantized export was calibrated on."""

    path: str
    num_images: int  # decoded and used
    folder: str
    skipped: int = 0  # calibration images that could not be decoded (each logged)
    skipped_files: tuple[str, ...] = ()

    @classmethod
    def of(cls, out_path, paths: Sequence[Path], folder, skipped: Sequence[DecodeError]) -> CalibrationReport:
        return cls(str(out_path), len(paths) - len(skipped), str(folder), len(skipped),
                   tuple(err.path for err in skipped))

    def summary(self) -> str:
        size = os.path.getsize(self.path) / 2**20
        names = ", ".join(Path(p).name for p in self.skipped_files[:3]) + (", ..." if self.skipped > 3 else "")
        skipped = f" ({self.skipped} unreadable skipped: {names})" if self.skipped else ""
        return (f"int8 model {self.path} ({size:.2f} MiB), calibrated on {self.num_images} images from "
                f"{self.folder}{skipped}")


def _calibration_batches(paths: Sequence[Path], preprocess: Preprocess, skipped: list[DecodeError], batch: int):
    """Preprocessed batches of the decodable ``paths``; the others are logged and appended to ``skipped``."""
    used = 0
    for i in range(0, len(paths), batch):
        x = load_batch(list(paths[i : i + batch]), preprocess, skipped)
        used += len(x)
        if len(x):
            yield x
    if not used:
        raise UserError(f"none of the {len(paths)} calibration images could be decoded (first: {skipped[0]})")


def _calibration_reader(batches, input_name: str):
    ort_quant = require("onnxruntime.quantization")

    class FolderReader(ort_quant.CalibrationDataReader):
        def get_next(self):
            x = next(batches, None)
            return None if x is None else {input_name: x}

    return FolderReader()


@dataclass(frozen=True)
class OrtQuantSettings:
    """How ``quantize_onnx`` quantizes (the defaults are the measured choice, docs/deploy.md "ONNX Runtime int8").

    ``weights``/``reduce_range``: ONNX Runtime's x86 int8 convolutions without VNNI (AVX2, AVX-512 without VNNI) add
    pairs of u8 x s8 products in 16 bits, which saturates with full-range 8-bit s8 weights (digits Conv-S: 87-91%
    top-1 agreement with fp32). Two ways out: 7-bit s8 weights (``reduce_range``: the fast U8S8 kernels, but a
    coarser grid, 1-3 points of digits top-1 lost) or 8-bit u8 weights (ORT's U8U8 kernels, which do not saturate:
    digits top-1 within +-0.3 to +2 points of fp32, ~30% slower than U8S8 on AVX2). The default is the accurate one;
    ``FAST_ORT_INT8`` is the other. ``fp32_ops``: op types left in fp32 (no QDQ around them). ``fp32_first_conv``:
    keep the stem conv (3 input channels: a K=27 im2col that int8 kernels run poorly) in fp32.
    """

    activations: str = "u8"  # "u8" (asymmetric) or "s8" (symmetric)
    weights: str = "u8"  # "u8" (ORT's U8U8 kernels: no 16-bit saturation) or "s8" (U8S8: faster on x86)
    per_channel: bool = True
    reduce_range: bool = False  # 7-bit weights
    fp32_first_conv: bool = False
    fp32_ops: tuple[str, ...] = ()
    pre_process: bool = True  # ORT's shape inference + optimisation pre-pass (quant_pre_process)

    def __post_init__(self) -> None:
        if self.activations not in ("u8", "s8"):
            raise ValueError(f"activations must be 'u8' or 's8', got {self.activations!r}")
        if self.weights not in ("u8", "s8"):
            raise ValueError(f"weights must be 'u8' or 's8', got {self.weights!r}")


# U8S8 with 7-bit weights: ORT's fastest x86 int8 kernels without saturation, for ~1-3 points of top-1 (see above)
FAST_ORT_INT8 = OrtQuantSettings(weights="s8", reduce_range=True)

# `mnv4 export --ort-int8-weights`: ONNX Runtime's int8 kernel choice by name
ORT_INT8_WEIGHTS = {"u8": OrtQuantSettings(), "s8-7bit": FAST_ORT_INT8}


def ort_int8_settings(weights: str | None) -> OrtQuantSettings:
    """The ``OrtQuantSettings`` of an ``--ort-int8-weights`` choice (None: the default, u8)."""
    if weights is None:
        return OrtQuantSettings()
    if weights not in ORT_INT8_WEIGHTS:
        raise UserError(f"--ort-int8-weights must be one of {', '.join(ORT_INT8_WEIGHTS)}, got {weights!r}")
    return ORT_INT8_WEIGHTS[weights]


def _first_conv(proto) -> str | None:
    return next((n.name for n in proto.graph.node if n.op_type == "Conv"), None)


def quantize_onnx(
    fp32_path: str | Path,
    out_path: str | Path,
    calib_dir: str | Path,
    *,
    preprocess: Preprocess,
    num_images: int = 256,
    settings: OrtQuantSettings | None = None,
) -> CalibrationReport:
    """Static int8 QDQ quantization of an fp32 ONNX export (``mnv4.export.onnx.export_onnx``, dynamic batch).

    Calibrates (MinMax) on up to ``num_images`` images of ``calib_dir`` (labelled or flat folder), preprocessed by
    ``preprocess`` -- ``Preprocess.for_model(model, size)`` of the model the file was exported from (the file alone
    does not know its tag's evaluation preprocessing, hence no default). ``settings``: see ``OrtQuantSettings``.
    """
    onnx = require("onnx")
    ort_quant = require("onnxruntime.quantization")
    from onnxruntime.quantization.shape_inference import quant_pre_process

    settings = settings or OrtQuantSettings()
    paths = calibration_images(calib_dir, num_images)
    input_name = onnx.load(str(fp32_path), load_external_data=False).graph.input[0].name
    skipped: list[DecodeError] = []
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    u8 = settings.activations == "u8"
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        source = Path(fp32_path)
        if settings.pre_process:
            # ORT's recommended pre-pass: shape inference + graph optimisation, so QDQ pairs land where kernels fuse
            source = Path(tmp) / "prepped.onnx"
            quant_pre_process(str(fp32_path), str(source), skip_symbolic_shape=False)
        proto = onnx.load(str(source), load_external_data=False)
        ops = sorted({n.op_type for n in proto.graph.node} - set(settings.fp32_ops))
        excluded = [name for name in [_first_conv(proto)] if name] if settings.fp32_first_conv else []
        ort_quant.quantize_static(
            str(source),
            str(out_path),
            _calibration_reader(_calibration_batches(paths, preprocess, skipped, batch=8), input_name),
            quant_format=ort_quant.QuantFormat.QDQ,
            op_types_to_quantize=ops,
            nodes_to_exclude=excluded,
            per_channel=settings.per_channel,
            reduce_range=settings.reduce_range,
            activation_type=ort_quant.QuantType.QUInt8 if u8 else ort_quant.QuantType.QInt8,
            weight_type=ort_quant.QuantType.QInt8 if settings.weights == "s8" else ort_quant.QuantType.QUInt8,
            calibrate_method=ort_quant.CalibrationMethod.MinMax,
            extra_options={"ActivationSymmetric": not u8, "WeightSymmetric": True},
        )
    return CalibrationReport.of(out_path, paths, calib_dir, skipped)


def pt2e_quantize(
    net: nn.Module, quantizer, calibration: Iterable[torch.Tensor], input_size: tuple[int, int],
    *, fold_quantize: bool = True,
) -> nn.Module:
    """PT2E post-training quantization of an eval-mode module: ``torch.export`` at batch 1 -> ``prepare_pt2e`` with
    ``quantizer`` -> one forward pass per calibration tensor (``1 x C x H x W``) -> ``convert_pt2e``. Returns the
    converted graph (quantize/dequantize ops around the int8-annotated ops), ready for a backend's lowering."""
    from torchao.quantization.pt2e import quantize_pt2e

    sample = (torch.zeros(1, getattr(net, "in_chans", 3), *input_size),)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        graph = torch.export.export(net, sample).module()
        prepared = quantize_pt2e.prepare_pt2e(graph, quantizer)
        for x in calibration:  # one image per call: the exported graph is specialised to batch 1
            prepared(x)
        return quantize_pt2e.convert_pt2e(prepared, fold_quantize=fold_quantize)


def calibration_tensors(
    paths: Sequence[Path], preprocess: Preprocess, skipped: list[DecodeError]
) -> Iterator[torch.Tensor]:
    """The decodable calibration images one by one, as ``1 x C x H x W`` tensors (the PT2E graphs are specialised
    to batch 1); the others are logged and appended to ``skipped``."""
    for x in _calibration_batches(paths, preprocess, skipped, batch=1):
        yield torch.from_numpy(x)


def export_litert_int8(
    model: nn.Module,
    out_path: str | Path,
    calib_dir: str | Path,
    *,
    input_size: tuple[int, int],
    num_images: int = 256,
) -> CalibrationReport:
    """LiteRT int8 (per-channel weights, int8 activations and I/O) through litert-torch's PT2E path, calibrated on
    ``calib_dir`` with the model's evaluation preprocessing."""
    size = tuple(input_size)
    exportable = classifier_exportable(model, size, classifier_for="LiteRT")
    calibration = Calibration(Path(calib_dir), Preprocess.for_model(model, size), num_images)
    return litert_int8(exportable, out_path, calibration)


def litert_int8(exportable: Exportable, out_path: str | Path, calibration: Calibration) -> CalibrationReport:
    """``exportable`` as an int8 ``.tflite``: PT2E with litert-torch's symmetric per-channel quantizer."""
    from .litert import convert_quiet

    require("litert_torch")
    from litert_torch.quantize import pt2e_quantizer, quant_config

    quantizer = pt2e_quantizer.PT2EQuantizer().set_global(
        pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=True)
    )
    paths = calibration_images(calibration.folder, calibration.num_images)
    skipped: list[DecodeError] = []
    converted = _pt2e_calibrated(exportable, quantizer, paths, calibration.preprocess, skipped, fold_quantize=False)
    convert_quiet(converted, (exportable.sample,), out_path,
                  quant_config=quant_config.QuantConfig(pt2e_quantizer=quantizer))
    return CalibrationReport.of(out_path, paths, calibration.folder, skipped)


def export_executorch_int8(
    model: nn.Module,
    out_path: str | Path,
    calib_dir: str | Path,
    *,
    input_size: tuple[int, int],
    num_images: int = 256,
) -> CalibrationReport:
    """ExecuTorch int8 (``.pte``, XNNPACK): PT2E with ``mnv4.export.executorch.xnnpack_quantizer()`` calibrated on
    ``calib_dir`` with the model's evaluation preprocessing; float32 input and output."""
    size = tuple(input_size)
    exportable = classifier_exportable(model, size, classifier_for="ExecuTorch")
    calibration = Calibration(Path(calib_dir), Preprocess.for_model(model, size), num_images)
    return executorch_int8(exportable, out_path, calibration)


def executorch_int8(exportable: Exportable, out_path: str | Path, calibration: Calibration) -> CalibrationReport:
    """``exportable`` as an int8 ``.pte``: PT2E with the XNNPACK quantizer, lowered to the XNNPACK delegate."""
    from .executorch import lower_to_executorch, xnnpack_quantizer

    paths = calibration_images(calibration.folder, calibration.num_images)
    skipped: list[DecodeError] = []
    converted = _pt2e_calibrated(exportable, xnnpack_quantizer(), paths, calibration.preprocess, skipped)
    lower_to_executorch(converted, (exportable.sample,), out_path)
    return CalibrationReport.of(out_path, paths, calibration.folder, skipped)


def _pt2e_calibrated(exportable: Exportable, quantizer, paths, preprocess: Preprocess, skipped, **kwargs):
    """``pt2e_quantize`` of ``exportable``'s module, calibrated on the decodable ``paths``."""
    images = calibration_tensors(paths, preprocess, skipped)
    return pt2e_quantize(exportable.module, quantizer, images, tuple(exportable.sample.shape[2:]), **kwargs)


# ---------------------------------------------------------------------------------------------- accuracy


@dataclass(frozen=True)
class AccuracyReport:
    """Top-1 of one model file (or the PyTorch model) on a labelled folder."""

    name: str
    top1: float
    num_images: int
    size_bytes: int | None = None

    def row(self) -> str:
        size = f"{self.size_bytes / 2**20:8.2f} MiB" if self.size_bytes else f"{'-':>12s}"
        return f"{self.name:28s} {size} top-1 {100 * self.top1:6.2f}% ({self.num_images} images)"


def top1_accuracy(
    run: Callable[[np.ndarray], np.ndarray], folder: str | Path, preprocess: Preprocess, batch_size: int = 1,
    skipped: list[DecodeError] | None = None,
) -> tuple[float, int]:
    """Top-1 of ``run`` (NCHW float32 batch -> logits) on a labelled ImageFolder root; (accuracy, images scored).

    Labels as ``mnv4 eval`` gives them (``ImageSet.targets`` for the model's number of outputs: ImageNet synset
    folders get their ImageNet indices). Images that cannot be decoded are skipped, logged and appended to
    ``skipped``; non-finite logits count as wrong."""
    images = scan_folder(folder)
    if not images.classes:
        raise UserError(f"{folder} has no class sub-folders: an accuracy check needs a labelled ImageFolder root")
    skipped = [] if skipped is None else skipped
    targets, correct, scored = None, 0, 0
    for i in range(0, len(images), batch_size):
        loaded = load_images(images.paths[i : i + batch_size], preprocess)
        skipped.extend(loaded.skipped)
        if not loaded.kept:
            continue
        logits = np.asarray(run(loaded.array)).reshape(len(loaded.kept), -1)
        targets = targets or images.targets(logits.shape[1])
        hit = (logits.argmax(axis=1) == np.asarray([targets[i + j] for j in loaded.kept])) & np.isfinite(logits).all(1)
        correct += int(hit.sum())
        scored += len(loaded.kept)
    if not scored:
        raise UserError(f"none of the {len(images)} images in {folder} could be decoded")
    return correct / scored, scored


def torch_runner(model: nn.Module) -> Callable[[np.ndarray], np.ndarray]:
    model = model.eval()

    @torch.no_grad()
    def run(x: np.ndarray) -> np.ndarray:
        return model(torch.from_numpy(x)).numpy()

    return run
