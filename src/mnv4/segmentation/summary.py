"""Parameters and MACs of MobileNetV4 segmenters next to torchvision's MobileNetV3 ones (``mnv4 segment models``,
``benchmarks/segment_latency.py``).

Counting follows ``mnv4.analysis`` (convs, linears, Mobile MQA matmuls; BN, activations and the final upsampling not
counted; 1 MAC = 2 FLOPs), for one image of ``size`` x ``size``, the whole segmenter (backbone, head), without
DeepLabV3's aux head (not run at inference). torchvision publishes its segmenters' "GFLOPS" with the same count: at
520 px ``count_segmenter`` gives ``lraspp_mobilenet_v3_large`` exactly its published 3,221,538 parameters and 2.086
GMACs (``PUBLISHED``; tests/test_segmentation_train.py checks it).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..analysis import count_macs, count_params
from .models import SegmenterSpec, create_segmenter

# (arch, backbone) of the segmenters compared: LR-ASPP on the backbones a phone would take, DeepLabV3 on Conv-M
SEGMENTERS = [
    ("lraspp", "mobilenetv4_conv_small"),
    ("lraspp", "mobilenetv4_conv_medium"),
    ("lraspp", "mobilenetv4_conv_medium_seg"),
    ("lraspp", "mobilenetv4_hybrid_medium"),
    ("deeplabv3", "mobilenetv4_conv_medium"),
]
# each architecture's MobileNetV3 reference in torchvision
REFERENCES = {"lraspp": "lraspp_mobilenet_v3_large", "deeplabv3": "deeplabv3_mobilenet_v3_large"}
# torchvision's weight metadata (COCO-VOC weights, with the aux head where the model has one): parameters and
# "_ops" (GFLOPS at 520 px, which are MACs)
PUBLISHED = {"lraspp_mobilenet_v3_large": (3_221_538, 2.086), "deeplabv3_mobilenet_v3_large": (11_029_328, 10.452)}


def row_name(arch: str, backbone: str) -> str:
    """A segmenter's name in tables: ``'lraspp mobilenetv4_conv_small'``."""
    return f"{arch} {backbone}"


def build_segmenter(name: str, num_classes: int = 21, output_stride: int = 16) -> nn.Module:
    """A segmenter with random weights (seed 0) in eval mode, by table name: ``row_name(arch, backbone)``, or a
    torchvision reference (``REFERENCES``; without its aux head)."""
    from torchvision.models import segmentation

    torch.manual_seed(0)
    if name in REFERENCES.values():
        return getattr(segmentation, name)(weights=None, weights_backbone=None, num_classes=num_classes).eval()
    arch, backbone = name.split(" ")
    return create_segmenter(SegmenterSpec(arch, backbone, num_classes, output_stride=output_stride)).eval()


@dataclass
class SegmenterCount:
    name: str
    arch: str
    params: int
    macs: int
    size: int
    reference: str  # the MobileNetV3 segmenter of the same architecture (its own name for a reference row)


def count_segmenter(name: str, size: int = 512, num_classes: int = 21) -> SegmenterCount:
    """Params and MACs of ``build_segmenter(name)`` for one ``size`` x ``size`` image."""
    model = build_segmenter(name, num_classes)
    arch = next((a for a, ref in REFERENCES.items() if ref == name), name.split(" ")[0])
    return SegmenterCount(name, arch, count_params(model), count_macs(model, (size, size)), size, REFERENCES[arch])


def segmenter_table(size: int = 512, num_classes: int = 21) -> list[SegmenterCount]:
    """Every segmenter of ``SEGMENTERS``, each architecture followed by its torchvision reference."""
    rows = []
    for arch, reference in REFERENCES.items():
        rows += [count_segmenter(row_name(a, b), size, num_classes) for a, b in SEGMENTERS if a == arch]
        rows.append(count_segmenter(reference, size, num_classes))
    return rows
