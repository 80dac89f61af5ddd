"""int8 post-training quantization: ONNX Runtime static QDQ and LiteRT int8 (litert-torch PT2E), with accuracy checks.

ONNX Runtime: ``quantize_static`` in QDQ format, per-channel symmetric int8 weights, uint8 activations (the x86 /
ARM fast path: ORT fuses each DequantizeLinear -> Conv -> QuantizeLinear into a QLinearConv), MinMax calibration on
a folder of images. Everything except the graph input and the final logits runs in int8, the Mobile MQA matmuls
included.

LiteRT: ``litert_torch``'s PT2E path: ``torch.export`` -> ``prepare_pt2e`` with its symmetric per-channel
quantizer -> calibration forward passes -> ``convert_pt2e`` -> ``litert_torch.convert``: int8 kernels, and int8
input/output tensors, which ``mnv4.export.litert.LiteRTRunner`` (de)quantizes with the file's scale/zero point.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import UserError
from . import require
from .data import DecodeError, Preprocess, calibration_images, load_batch, load_images, scan_folder


@dataclass(frozen=True)
class CalibrationReport:
    """What a quantized export was calibrated on."""

    path: str
    num_images: int  # decoded and used
    folder: str
    skipped: int = 0  # calibration images that could not be decoded (each logged)

    def summary(self) -> str:
        size = os.path.getsize(self.path) / 2**20
        skipped = f" ({self.skipped} unreadable skipped)" if self.skipped else ""
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


def quantize_onnx(
    fp32_path: str | Path,
    out_path: str | Path,
    calib_dir: str | Path,
    *,
    input_size: tuple[int, int],
    num_images: int = 256,
    preprocess: Preprocess | None = None,
) -> CalibrationReport:
    """Static int8 QDQ quantization of an fp32 ONNX export (``mnv4.export.onnx.export_onnx``, dynamic batch).

    Calibrates on up to ``num_images`` images of ``calib_dir`` (labelled or flat folder), preprocessed by
    ``preprocess`` (default: resize to ``input_size``, ImageNet normalisation).
    """
    onnx = require("onnx")
    ort_quant = require("onnxruntime.quantization")
    from onnxruntime.quantization.shape_inference import quant_pre_process

    paths = calibration_images(calib_dir, num_images)
    preprocess = preprocess or Preprocess(tuple(input_size))
    input_name = onnx.load(str(fp32_path), load_external_data=False).graph.input[0].name
    skipped: list[DecodeError] = []
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        prepped = Path(tmp) / "prepped.onnx"
        # ORT's recommended pre-pass: shape inference + graph optimisation, so QDQ pairs land where kernels fuse.
        quant_pre_process(str(fp32_path), str(prepped), skip_symbolic_shape=False)
        ort_quant.quantize_static(
            str(prepped),
            str(out_path),
            _calibration_reader(_calibration_batches(paths, preprocess, skipped, batch=8), input_name),
            quant_format=ort_quant.QuantFormat.QDQ,
            per_channel=True,
            activation_type=ort_quant.QuantType.QUInt8,
            weight_type=ort_quant.QuantType.QInt8,
            calibrate_method=ort_quant.CalibrationMethod.MinMax,
            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
        )
    return CalibrationReport(str(out_path), len(paths) - len(skipped), str(calib_dir), len(skipped))


def export_litert_int8(
    model: nn.Module,
    out_path: str | Path,
    calib_dir: str | Path,
    *,
    input_size: tuple[int, int],
    num_images: int = 256,
    preprocess: Preprocess | None = None,
) -> CalibrationReport:
    """LiteRT int8 (per-channel weights, int8 activations and I/O) through litert-torch's PT2E path."""
    from .litert import convert_quiet, prepare_litert

    require("litert_torch")
    from litert_torch.quantize import pt2e_quantizer, quant_config
    from torchao.quantization.pt2e import quantize_pt2e

    net = prepare_litert(model)
    paths = calibration_images(calib_dir, num_images)
    preprocess = preprocess or Preprocess.for_model(model, tuple(input_size))
    sample = (torch.zeros(1, net.in_chans, *input_size),)
    quantizer = pt2e_quantizer.PT2EQuantizer().set_global(
        pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=True)
    )
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        graph = torch.export.export(net, sample).module()
        prepared = quantize_pt2e.prepare_pt2e(graph, quantizer)
        skipped: list[DecodeError] = []
        for x in _calibration_batches(paths, preprocess, skipped, batch=1):  # the graph is specialised to batch 1
            prepared(torch.from_numpy(x))
        converted = quantize_pt2e.convert_pt2e(prepared, fold_quantize=False)
    convert_quiet(converted, sample, out_path, quant_config=quant_config.QuantConfig(pt2e_quantizer=quantizer))
    return CalibrationReport(str(out_path), len(paths) - len(skipped), str(calib_dir), len(skipped))


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
