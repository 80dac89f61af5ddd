"""ONNX export of a whole detector -- resize, normalisation, backbone, head, box decoding, score threshold, top-k and
NMS -- verified in ONNX Runtime.

The graph takes one image ``image`` (1, 3, H, W), float RGB in [0, 1], any H and W, and returns ``boxes`` (N, 4)
x1y1x2y2 in that image's pixels, ``scores`` (N,) and ``labels`` (N,) int64 (1..K: ``DetectorSpec.categories``), as
the PyTorch model does. **NMS is inside the graph**: torchvision's ``batched_nms`` exports as ONNX
``NonMaxSuppression`` (inside an ``If`` that handles the no-box case), so no post-processing is left to the caller.
Batch size is 1: torchvision post-processes image by image and the TorchScript tracer unrolls that loop.

``mnv4 detect export`` runs this through the export pipeline (``mnv4.export.pipeline.run_export`` with the
``Detector`` kind below): written under a temporary name, compared with PyTorch (``SameDetections``), moved into
place only when the check passes. Only formats that write data-dependent output sizes can hold the post-processing:
``torch.export`` -- where the ExecuTorch, LiteRT, Core ML and AOTInductor paths start -- stops at torchvision's
``batched_nms`` ("Could not guard on data-dependent expression", both detectors, torch 2.14), so ONNX it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import UserError
from ..export import require
from ..export.format import Exportable, ExportFormat
from ..export.kind import ModelKind
from ..export.registry import FORMATS
from ..export.verify import FP32_TOLERANCE, max_relative_error

OUTPUT_NAMES = ["boxes", "scores", "labels"]


class DetectorForExport(nn.Module):
    """``(1, 3, H, W)`` tensor -> ``(boxes, scores, labels)``: a torchvision detector with tensors in and out."""

    def __init__(self, detector: nn.Module):
        super().__init__()
        self.detector = detector

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.detector([image[0]])[0]
        return out["boxes"], out["scores"], out["labels"]


def export_detector_onnx(model: nn.Module, path: str | Path, image_size: int, opset: int = 18) -> Path:
    """Trace ``model`` (a torchvision detector, put in eval mode) on a ``image_size`` square image with the
    TorchScript exporter (torchvision registers its NMS for it) and write ``path``; H and W stay dynamic."""
    from ..export.onnx import write_onnx

    return write_onnx(detector_exportable(model, image_size), path, opset=opset)


def detector_exportable(model: nn.Module, image_size: int) -> Exportable:
    """A detector as the ONNX format writes it: ``DetectorForExport``, traced on a random ``image_size`` square image
    (any H and W afterwards), batch 1, outputs ``boxes`` / ``scores`` / ``labels`` with a symbolic detection count.
    Written as traced: onnxslim is not run on its ``If`` / ``NonMaxSuppression`` subgraphs."""
    wrapper = DetectorForExport(model.eval().float().cpu()).eval()
    sample = torch.rand(1, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    return Exportable(
        wrapper, sample, tuple(OUTPUT_NAMES), input_name="image", dynamic_batch=False, dynamic_hw=True,
        output_axes={name: {0: "detections"} for name in OUTPUT_NAMES}, simplify=False,
        description="mnv4 detector: image (1,3,H,W) in [0,1] -> boxes/scores/labels, NMS inside",
    )


def graph_op_types(path: str | Path) -> set[str]:
    """Every op type in the ONNX file, including those in ``If``/``Loop`` subgraphs (where NMS sits)."""
    onnx = require("onnx")

    def walk(graph) -> set[str]:
        ops = set()
        for node in graph.node:
            ops.add(node.op_type)
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    ops |= walk(attr.g)
                for sub in attr.graphs:
                    ops |= walk(sub)
        return ops

    return walk(onnx.load(str(path)).graph)


@dataclass
class DetectionCheck:
    """How a detector file's detections compare with PyTorch's on real pictures."""

    format: str
    path: str
    num_images: int
    max_rel_error: float  # boxes and scores, relative to their scale, over the images with detections
    tolerance: float
    mismatch: str = ""  # the first image whose detection count or labels differ

    @property
    def ok(self) -> bool:
        return not self.mismatch and self.max_rel_error <= self.tolerance

    def summary(self) -> str:
        if self.mismatch:
            return f"{self.format} check FAILED: {self.mismatch}"
        verdict = "OK" if self.ok else "FAILED"
        return (f"{self.format} check {verdict}: the same detections as PyTorch (count and labels) on "
                f"{self.num_images} images; boxes and scores max |diff| / max |torch output| = "
                f"{self.max_rel_error:.2e} (tolerance {self.tolerance:.0e})")

    def raise_if_failed(self) -> DetectionCheck:
        if not self.ok:
            raise RuntimeError(f"{self.summary()}: the export {self.path} does not reproduce the model")
        return self


@dataclass
class SameDetections:
    """What "agrees with PyTorch" means for a detector (a ``mnv4.export.verify.Comparison``): on each of ``images``
    ((3, H, W) floats in [0, 1], real pictures: random noise gives no detections to compare) the file returns as
    many detections as PyTorch with the same labels, boxes and scores within ``tolerance`` of their scale."""

    images: Sequence[torch.Tensor]
    tolerance: float = FP32_TOLERANCE

    @torch.no_grad()
    def __call__(self, model, run, fmt: str, path: str) -> DetectionCheck:
        wrapper = DetectorForExport(model.eval().float().cpu()).eval()
        worst, compared = 0.0, 0
        for i, image in enumerate(self.images):
            x = image.unsqueeze(0).float()
            expected = [t.numpy() for t in wrapper(x)]
            actual = run(x.numpy())
            if len(actual[0]) != len(expected[0]) or not np.array_equal(actual[2], expected[2]):
                mismatch = (f"image {i}: {len(actual[0])} detections with labels {actual[2][:10].tolist()}..., "
                            f"PyTorch {len(expected[0])} with {expected[2][:10].tolist()}...")
                return DetectionCheck(fmt, str(path), len(self.images), float("inf"), self.tolerance, mismatch)
            if len(expected[0]):
                worst = max(worst, max_relative_error(actual[:2], expected[:2]))
                compared += 1
        if not compared:
            raise UserError(f"none of the {len(self.images)} images gave a detection, so nothing was compared: "
                            "verify with pictures the detector finds objects in")
        return DetectionCheck(fmt, str(path), len(self.images), worst, self.tolerance)


def verify_detector_onnx(
    model: nn.Module, path: str | Path, images: Sequence[torch.Tensor], tolerance: float = FP32_TOLERANCE
) -> DetectionCheck:
    """Run the ONNX file in ONNX Runtime and ``model`` in PyTorch on ``images`` and compare (``SameDetections``)."""
    from ..export.onnx import OnnxFormat

    return SameDetections(images, tolerance)(model, OnnxFormat().runner(Path(path)), "ONNX", str(path))


class Detector(ModelKind):
    """A torchvision detector (``mnv4 detect export``): written whole, post-processing and NMS inside, by the
    formats that write graphs with data-dependent shapes (ONNX); compared with PyTorch on ``images``
    (``SameDetections``; none given: not compared). ``image_size``: the square size it is traced at (any size runs
    afterwards); ``ExportConfig.input_size`` overrides it."""

    name = "detector"
    precisions = ("fp32",)

    def __init__(self, images: Sequence[torch.Tensor] = (), image_size: int | None = None):
        self.images, self.image_size = list(images), image_size

    def refuses(self, fmt: ExportFormat) -> str | None:
        if fmt.data_dependent_shapes:
            return None
        takers = " / ".join(f.name for f in FORMATS.values() if f.data_dependent_shapes)
        return (f"{fmt.label} ({fmt.suffix}) cannot write a detector: its post-processing (score filter, top-k, NMS) "
                f"has data-dependent output sizes, which the torch.export path of {fmt.label} refuses; use "
                f"--format {takers} (NMS inside the graph)")

    def input_size(self, model, cfg) -> tuple[int, int]:
        if cfg.input_size is not None:
            return tuple(cfg.input_size)
        if self.image_size is None:
            raise UserError("a detector's export size: pass Detector(image_size=spec.size) or ExportConfig.input_size")
        return (self.image_size, self.image_size)

    def exportable(self, model, fmt, size, cfg) -> Exportable:
        if size[0] != size[1]:
            raise UserError(f"a detector is traced on a square image, got {size[0]}x{size[1]}")
        return detector_exportable(model, size[0])

    def comparison(self, model, fmt, size, cfg) -> SameDetections | None:
        if not self.images:
            return None
        return SameDetections(self.images, FP32_TOLERANCE if cfg.tolerance is None else cfg.tolerance)
