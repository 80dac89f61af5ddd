"""ONNX export of a whole detector -- resize, normalisation, backbone, head, box decoding, score threshold, top-k and
NMS -- verified in ONNX Runtime.

The graph takes one image ``image`` (1, 3, H, W), float RGB in [0, 1], any H and W, and returns ``boxes`` (N, 4)
x1y1x2y2 in that image's pixels, ``scores`` (N,) and ``labels`` (N,) int64 (1..K: ``DetectorSpec.categories``), as
the PyTorch model does. **NMS is inside the graph**: torchvision's ``batched_nms`` exports as ONNX
``NonMaxSuppression`` (inside an ``If`` that handles the no-box case), so no post-processing is left to the caller.
Batch size is 1: torchvision post-processes image by image and the TorchScript tracer unrolls that loop.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..export import require
from ..export.verify import FP32_TOLERANCE, ExportCheck, max_relative_error

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
    onnx = require("onnx")
    require("onnxruntime")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapper = DetectorForExport(model.eval().float().cpu()).eval()
    x = torch.rand(1, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    dynamic = {"image": {2: "height", 3: "width"}, **{name: {0: "detections"} for name in OUTPUT_NAMES}}
    with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # tracer chatter about Python control flow in torchvision's post-processing
        torch.onnx.export(wrapper, (x,), str(path), dynamo=False, opset_version=opset, input_names=["image"],
                          output_names=OUTPUT_NAMES, dynamic_axes=dynamic, do_constant_folding=True)
    proto = onnx.load(str(path))
    proto.doc_string = f"mnv4 detector: image (1,3,H,W) in [0,1] -> boxes/scores/labels, NMS inside (opset {opset})"
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    return path


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


@torch.no_grad()
def verify_detector_onnx(
    model: nn.Module, path: str | Path, images: Sequence[torch.Tensor], tolerance: float = FP32_TOLERANCE
) -> ExportCheck:
    """Run the ONNX file in ONNX Runtime and ``model`` in PyTorch on ``images`` ((3, H, W) floats in [0, 1], real
    pictures: random noise gives no detections to compare). Both must return the same number of detections with the
    same labels; boxes and scores may differ by ``tolerance`` relative to their scale."""
    from ..export.onnx import onnx_session

    session = onnx_session(path)
    wrapper = DetectorForExport(model.eval().float().cpu()).eval()
    worst, compared = 0.0, 0
    for image in images:
        x = image.unsqueeze(0).float()
        expected = [t.numpy() for t in wrapper(x)]
        actual = session.run(None, {"image": x.numpy()})
        if len(actual[0]) != len(expected[0]) or not np.array_equal(actual[2], expected[2]):
            raise RuntimeError(f"{path}: ONNX Runtime returns {len(actual[0])} detections with labels "
                               f"{actual[2][:10].tolist()}..., PyTorch {len(expected[0])} with "
                               f"{expected[2][:10].tolist()}...; the export does not reproduce the model")
        if len(expected[0]):
            worst = max(worst, max_relative_error(actual[:2], expected[:2]))
            compared += 1
    if not compared:
        raise ValueError("no image gave a detection, so nothing was compared: verify with pictures the detector "
                         "finds objects in")
    return ExportCheck("ONNX", str(path), worst, tolerance, [tuple(im.shape) for im in images], "images")
