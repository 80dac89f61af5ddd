"""Export of a whole segmenter -- backbone (BN folded), head and the upsampling to the input size -- to any format of
the export registry (ONNX, LiteRT, ExecuTorch, ...), checked against PyTorch before the file is written.

What is exported: ``model(x)["out"]``, the (N, K, H, W) logits at the input size, as torchvision's segmenters return
them, for a fixed input size (the spec's ``image_size`` square unless ``ExportConfig.input_size`` says otherwise); the
input is a normalised image (the spec's mean / std), the output named ``logits``. A phone takes the argmax over K for
the mask (or a softmax for soft masks) and has nothing else to resample. The alternative -- the head's 1/8 logits,
upsampled by the app -- saves the final bilinear resize (K x H x W x 4 MACs: 0.02 of LR-ASPP Conv-S's 1.77 GMACs at
512 px with 21 classes) but leaves the app to reproduce torchvision's ``align_corners=False`` resampling for the
masks to match; the file's output is the model's, so the check compares like with like. The aux head of a DeepLabV3
is not exported (training only).

What "agrees with PyTorch" means (``SameMasks``), on real images when the export has a folder of them (``--images``
or, for int8, ``--calib``; resized on the shorter side and centre-cropped to the export size, normalised as the spec
says) or on random normalised inputs otherwise:

- fp32 / fp16 files: the largest logit difference relative to the logits' scale within the tolerance (1e-3 / 3e-2,
  as for classifiers) and the argmax masks equal on >= 99.9% / 99% of the pixels (a pixel's class may flip only
  where two logits nearly tie) -- ``MaskCheck``;
- int8 files (calibrated through the same path as classifiers: ``Calibration`` of the calibration folder): the argmax
  masks of the int8 file and of fp32 PyTorch agree on >= 90% of the pixels and the logits keep >= 13 dB SQNR
  (``--min-agreement``, ``--min-sqnr``) -- ``MaskInt8Check``, judged as a classifier's top-1 agreement is, per
  pixel.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import UserError
from ..export.format import Calibration, Exportable
from ..export.kind import ModelKind
from ..export.verify import (
    INT8_MIN_AGREEMENT,
    INT8_MIN_SQNR_DB,
    Int8Check,
    default_tolerance,
    max_relative_error,
    random_inputs,
    sqnr_db,
)
from .models import SegmenterSpec

# fp32 / fp16: the share of pixels whose argmax must equal PyTorch's (only near-ties may flip)
MASK_MIN_AGREEMENT = {"fp32": 0.999, "fp16": 0.99}


class SegmenterForExport(nn.Module):
    """NCHW normalised images -> ``(N, K, H, W)`` logits at the input size: a torchvision segmenter with a tensor
    out (its ``"out"``) and its backbone deployed (BN and layer scale folded, attention as plain matmuls)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        from ..export.prepare import deployed_for_export

        net = copy.deepcopy(model).float().eval()
        net.backbone.body = deployed_for_export(net.backbone.body)
        if getattr(net, "aux_classifier", None) is not None:
            net.aux_classifier = None  # training only
        self.model = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)["out"]


def segmenter_exportable(model: nn.Module, size: tuple[int, int], spec: SegmenterSpec | None = None) -> Exportable:
    """A segmenter as the formats write it: ``SegmenterForExport`` traced at ``size`` (fixed), dynamic batch where the
    format can, input ``input``, output ``logits``."""
    what = f"{spec.arch} / {spec.backbone}, {spec.num_classes} classes" if spec else "segmenter"
    return Exportable(SegmenterForExport(model).eval(), torch.zeros(1, 3, *size), ("logits",),
                      description=f"mnv4 {what}: normalised image (N,3,{size[0]},{size[1]}) -> logits (N,K,H,W)")


@dataclass
class MaskCheck:
    """How an fp32 / fp16 file's logits and masks compare with PyTorch's."""

    format: str
    path: str
    agreement: float  # share of pixels whose argmax equals PyTorch's
    max_rel_error: float  # max |file - torch| / max |torch| over all logits
    tolerance: float
    min_agreement: float
    num_images: int
    input_kind: str

    @property
    def ok(self) -> bool:
        return self.max_rel_error <= self.tolerance and self.agreement >= self.min_agreement

    def summary(self) -> str:
        verdict = "OK" if self.ok else "FAILED"
        return (f"{self.format} check {verdict}: argmax masks equal PyTorch's on {100 * self.agreement:.3f}% of the "
                f"pixels (min {100 * self.min_agreement:g}%), max |diff| / max |torch logit| = "
                f"{self.max_rel_error:.2e} (tolerance {self.tolerance:.0e}), {self.num_images} {self.input_kind}")

    def raise_if_failed(self) -> MaskCheck:
        if not self.ok:
            raise RuntimeError(f"{self.summary()}: the export {self.path} does not reproduce the model")
        return self


@dataclass
class MaskInt8Check(Int8Check):
    """An int8 file against fp32 PyTorch on real images: ``agreement`` is per pixel (argmax masks), ``sqnr_db`` of
    all logits (``Int8Check``'s thresholds and handling)."""

    def summary(self) -> str:
        verdict = "OK" if self.ok else "FAILED"
        return (f"{self.format} int8 check {verdict}: argmax masks agree with PyTorch fp32 on "
                f"{100 * self.agreement:.2f}% of the pixels of {self.num_images} images "
                f"(min {100 * self.min_agreement:.0f}%), logit SQNR {self.sqnr_db:.1f} dB "
                f"(min {self.min_sqnr_db:g} dB)")


@dataclass
class SameMasks:
    """What "agrees with PyTorch" means for a segmenter (a ``mnv4.export.verify.Comparison``): the file and the
    PyTorch model run on each of ``images`` (batch 1; and the first two as one batch where the file takes any batch
    size); ``precision`` picks the judgement (module docstring)."""

    images: torch.Tensor  # (N, 3, H, W) normalised
    input_kind: str  # "real images" / "random inputs", for the summary
    precision: str = "fp32"
    tolerance: float | None = None
    min_agreement: float | None = None
    min_sqnr_db: float | None = None
    dynamic_batch: bool = False

    @torch.no_grad()
    def __call__(self, model, run, fmt: str, path: str) -> MaskCheck | MaskInt8Check:
        model = model.eval()
        batches = [self.images[i : i + 1] for i in range(len(self.images))]
        if self.dynamic_batch and len(self.images) >= 2:
            batches.append(self.images[:2])
        expected = [model(x)["out"].double().numpy() for x in batches]
        actual = [np.asarray(run(x.numpy())[0], dtype=np.float64) for x in batches]
        for a, e in zip(actual, expected, strict=True):
            if a.shape != e.shape:
                raise RuntimeError(f"the exported segmenter returned logits of shape {a.shape}, PyTorch {e.shape}")
        agreement = float(np.mean(np.concatenate([(a.argmax(1) == e.argmax(1)).ravel()
                                                  for a, e in zip(actual, expected, strict=True)])))
        if self.precision == "int8":
            every = [np.concatenate([v.ravel() for v in values]) for values in (actual, expected)]
            return MaskInt8Check(fmt, str(path), agreement, sqnr_db(*every), len(self.images),
                                 INT8_MIN_AGREEMENT if self.min_agreement is None else self.min_agreement,
                                 INT8_MIN_SQNR_DB if self.min_sqnr_db is None else self.min_sqnr_db)
        tolerance = default_tolerance(self.precision) if self.tolerance is None else self.tolerance
        return MaskCheck(fmt, str(path), agreement, max_relative_error(actual, expected), tolerance,
                         MASK_MIN_AGREEMENT[self.precision], len(self.images), self.input_kind)


class Segmenter(ModelKind):
    """A torchvision segmenter with a MobileNetV4 backbone (``mnv4 segment export``): the logits at a fixed input
    size (module docstring), any format of the registry; compared with PyTorch by ``SameMasks``."""

    name = "segmenter"

    def __init__(self, spec: SegmenterSpec):
        self.spec = spec

    def input_size(self, model, cfg) -> tuple[int, int]:
        return tuple(cfg.input_size or (self.spec.image_size, self.spec.image_size))

    def preprocess(self, size: tuple[int, int]):
        """An image file -> the export's input: the shorter side resized (bilinear) to cover ``size``, centre crop,
        the spec's normalisation."""
        from ..export.data import Preprocess

        return Preprocess(tuple(size), tuple(self.spec.mean), tuple(self.spec.std), crop_pct=1.0,
                          interpolation="bilinear")

    def exportable(self, model, fmt, size, cfg) -> Exportable:
        return segmenter_exportable(model, size, self.spec)

    def calibration(self, model, size, cfg) -> Calibration:
        return Calibration(Path(cfg.calib), self.preprocess(size), cfg.calib_images)

    def comparison(self, model, fmt, size, cfg) -> SameMasks:
        folder = cfg.eval_dir or cfg.calib
        if folder is None:
            images, kind = random_inputs(size, (2,), seed=0)[0], "random inputs"
        else:
            images, kind = self.check_images(folder, size, cfg.check_images), "real images"
        return SameMasks(images, kind, cfg.precision, cfg.tolerance, cfg.min_agreement, cfg.min_sqnr_db,
                         fmt.dynamic_batch)

    def check_images(self, folder: Path, size: tuple[int, int], count: int) -> torch.Tensor:
        """Up to ``count`` images of ``folder`` (a reproducible sample), preprocessed; undecodable ones skipped."""
        from ..export.data import calibration_images, load_batch

        paths = calibration_images(folder, count, seed=1)
        x = load_batch(paths, self.preprocess(size), skipped := [])
        if not len(x):
            raise UserError(f"none of the {len(paths)} images sampled from {folder} for the export check could be "
                            f"decoded (first: {skipped[0]})")
        return torch.from_numpy(x)
