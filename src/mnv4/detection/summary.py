"""Parameters and MACs of the detectors, next to the MobileNetV4 paper's Tab. 7 (whole detector at 384x384).

Counting follows ``mnv4.analysis`` (convs, linears, Mobile MQA matmuls; BN, activations and the box decoding / NMS
not counted; 1 MAC = 2 FLOPs), for one image of the detector's input size and 91 COCO classes (torchvision's and
TF Model Garden's COCO label space). The per-part split (backbone / FPN / head) is what docs/detection.md uses to
explain the gap to the paper's parameter counts, with ``classifier_head_conv``: the paper's counts match ours plus
the classification model's 960->1280 conv, which a backbone cut from the classifier carries but never runs.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..analysis import count_macs, count_params

# paper Tab. 7: backbone -> (COCO val AP, MACs (G), params (M)) of its RetinaNet at 384x384
PAPER_TAB7 = {
    "mobilenetv4_conv_medium": (32.6, 5.06, 9.79),
    "mobilenetv4_hybrid_medium": (34.0, 5.62, 11.15),
}
COCO_CLASSES = 91


@dataclass
class DetectorCount:
    name: str
    arch: str
    backbone: str
    size: int
    params: int
    macs: int
    backbone_params: int
    neck_params: int  # FPN (RetinaNet) or the four extra blocks (SSDLite)
    head_params: int
    classifier_head_conv: int  # the classification model's 960->1280 conv + BN, which detection never runs
    paper_params_m: float | None = None
    paper_gmacs: float | None = None
    paper_ap: float | None = None


def count_detector(arch: str, backbone: str, size: int | None = None) -> DetectorCount:
    """Params and MACs (one image) of ``arch`` (retinanet / ssdlite) on ``backbone``, split by part."""
    import torch

    from ..factory import create_model
    from .models import DetectorSpec, create_detector

    spec = DetectorSpec(arch, backbone, COCO_CLASSES, size)
    torch.manual_seed(0)
    model = create_detector(spec).eval()
    if arch == "retinanet":
        body, neck = model.backbone.body, model.backbone.fpn
    else:
        body, neck = model.backbone.body, model.backbone.extra
    paper = PAPER_TAB7.get(backbone) if arch == "retinanet" and spec.size == 384 else None
    classifier = create_model(backbone)
    return DetectorCount(
        name=f"{arch} {backbone}",
        arch=arch,
        backbone=backbone,
        size=spec.size,
        params=count_params(model),
        macs=count_macs(model, (spec.size, spec.size)),
        backbone_params=count_params(body),
        neck_params=count_params(neck),
        head_params=count_params(model.head),
        classifier_head_conv=count_params(classifier.conv_head) + count_params(classifier.norm_head),
        paper_params_m=paper[2] if paper else None,
        paper_gmacs=paper[1] if paper else None,
        paper_ap=paper[0] if paper else None,
    )


def paper_table(backbones: list[str]) -> list[DetectorCount]:
    """The paper's RetinaNet (384) for each backbone, then the SSDLite (320) on Conv-S and Conv-M."""
    rows = [count_detector("retinanet", b) for b in backbones]
    rows += [count_detector("ssdlite", b) for b in ("mobilenetv4_conv_small", "mobilenetv4_conv_medium")]
    return rows
