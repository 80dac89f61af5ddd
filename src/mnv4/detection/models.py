"""Detectors with a MobileNetV4 backbone, assembled from torchvision's detection models.

- ``retinanet_mobilenetv4``: the MobileNetV4 paper's detector (§7.2, Tab. 7): RetinaNet on P3-P7 from the /8, /16
  and /32 levels, a 256-d depthwise-separable FPN and 4-layer head (``heads.py``), 384x384 input. Any variant.
- ``ssdlite_mobilenetv4``: torchvision's SSDLite design (``ssdlite320_mobilenet_v3_large``) on a MobileNetV4, the
  phone-sized option: maps at the expansion of the first /32 block (C4) and at the /32 output, four extra blocks
  (512/256/256/128), 3x3 depthwise + 1x1 prediction heads, 320x320 input.

torchvision supplies the anchors (``AnchorGenerator`` / ``DefaultBoxGenerator``), the matching, the losses (focal +
L1; SSD's hard-negative-mined CE + smooth L1), the box coding, the resize/normalise transform and the
post-processing (score threshold, top-k, batched NMS). Class 0 is background (SSD trains it; RetinaNet leaves it
unused): a data set with K categories gives ``num_classes = K + 1``.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from functools import partial

import torch
from torch import nn
from torchvision.models.detection.anchor_utils import AnchorGenerator, DefaultBoxGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.retinanet import RetinaNet
from torchvision.models.detection.ssd import SSD
from torchvision.models.detection.ssdlite import SSDLiteHead
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool, LastLevelP6P7

from ..blocks import UniversalInvertedBottleneck
from ..errors import UserError
from ..model import MobileNetV4
from ..transforms import data_config
from .backbone import EXTRA_LEVELS, freeze_batchnorm, freeze_stages, mobilenetv4_backbone
from .heads import SeparableRetinaNetHead, separable_fpn

ARCHITECTURES = ("retinanet", "ssdlite")
DEFAULT_SIZES = {"retinanet": 384, "ssdlite": 320}  # paper Tab. 7; torchvision's SSDLite320
SSD_NORM = partial(nn.BatchNorm2d, eps=0.001, momentum=0.03)  # torchvision's ssdlite320 BatchNorm


class FPNBackbone(BackboneWithFPN):
    """``BackboneWithFPN``'s layout and forward (``body`` -> ``fpn``) on a body that returns an OrderedDict itself.

    torchvision's own constructor wraps the body in ``IntermediateLayerGetter``, which needs a network whose forward
    is its children in a row; ``MobileNetV4Backbone`` (or an FX feature extractor) already returns the maps.
    """

    def __init__(self, body: nn.Module, fpn: FeaturePyramidNetwork, out_channels: int):
        nn.Module.__init__(self)
        self.body = body
        self.fpn = fpn
        self.out_channels = out_channels


def fpn_on(
    body: nn.Module, channels: list[int], fpn_channels: int = 256, extra_levels: str = "p6p7", separable: bool = False
) -> FPNBackbone:
    """An FPN of width ``fpn_channels`` over ``body``'s maps (``channels`` each, fine to coarse).

    ``extra_levels``: ``"p6p7"`` (torchvision's ``LastLevelP6P7``, RetinaNet/FCOS), ``"pool"``
    (``LastLevelMaxPool``, Faster R-CNN) or ``"none"``. ``separable=True``: the MobileNetV4 paper's
    depthwise-separable FPN with separable P6/P7 (needs ``extra_levels="p6p7"``).
    """
    if extra_levels not in EXTRA_LEVELS:
        raise UserError(f"extra_levels must be one of {EXTRA_LEVELS}, got {extra_levels!r}")
    if separable and extra_levels != "p6p7":
        raise UserError("the separable FPN comes with its own P6/P7: use extra_levels='p6p7'")
    if separable:
        fpn = separable_fpn(channels, fpn_channels)
    else:
        extra = {"p6p7": LastLevelP6P7(fpn_channels, fpn_channels), "pool": LastLevelMaxPool(), "none": None}
        fpn = FeaturePyramidNetwork(channels, fpn_channels, extra_blocks=extra[extra_levels])
    return FPNBackbone(body, fpn, fpn_channels)


def mobilenetv4_fpn_backbone(
    name: str | os.PathLike = "mobilenetv4_conv_medium",
    pretrained: bool | str | os.PathLike = False,
    out_indices: tuple[int, ...] = (2, 3, 4),
    fpn_channels: int = 256,
    extra_levels: str = "p6p7",
    separable: bool = False,
    **backbone_kwargs,
) -> FPNBackbone:
    """A MobileNetV4 + FPN, ready for torchvision's RetinaNet / FasterRCNN / FCOS (``out_channels = fpn_channels``;
    ``extra_levels`` and ``separable`` as in ``fpn_on``). ``backbone_kwargs`` go to ``mobilenetv4_backbone``
    (``frozen_bn``, ``trainable_stages``, ``drop_path_rate``, ``extractor``)."""
    body = mobilenetv4_backbone(name, pretrained, out_indices, **backbone_kwargs)
    return fpn_on(body, body.channels, fpn_channels, extra_levels, separable)


def retinanet_anchors() -> AnchorGenerator:
    """torchvision's RetinaNet anchors: 3 scales x 3 ratios per level, base size 4x the stride (32 on P3 ... 512 on
    P7) -- also Model Garden's RetinaNet default (``anchor_size`` 4, ``num_scales`` 3)."""
    sizes = tuple((s, int(s * 2 ** (1 / 3)), int(s * 2 ** (2 / 3))) for s in (32, 64, 128, 256, 512))
    return AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))


def _normalisation(name: str | os.PathLike) -> dict:
    """The backbone tag's input normalisation (ImageNet mean/std for timm's weights), for the detector transform."""
    cfg = data_config(os.fspath(name))
    return {"image_mean": list(cfg.mean), "image_std": list(cfg.std)}


def retinanet_mobilenetv4(
    backbone: str | os.PathLike = "mobilenetv4_conv_medium",
    num_classes: int = 91,
    pretrained_backbone: bool | str | os.PathLike = False,
    image_size: int = 384,
    fpn_channels: int = 256,
    separable: bool = True,
    frozen_bn: bool = False,
    trainable_stages: int | None = None,
    drop_path_rate: float = 0.0,
    extractor: str = "features_only",
    **kwargs,
) -> RetinaNet:
    """The paper's RetinaNet (``separable=True``) or torchvision's full-conv one (``separable=False``).

    ``image_size``: images are resized so the longer side is ``image_size`` (torchvision's ``min_size`` =
    ``max_size``), then padded to a multiple of 32 -- 384x384 for square inputs, as in the paper. ``num_classes``
    includes the background slot 0 (91 = torchvision's COCO ids). ``kwargs`` go to torchvision's ``RetinaNet``
    (``score_thresh``, ``nms_thresh``, ``detections_per_img``, ``topk_candidates``, ``fg_iou_thresh`` ...).
    """
    _check_classes(num_classes)
    fpn_backbone = mobilenetv4_fpn_backbone(
        backbone, pretrained_backbone, (2, 3, 4), fpn_channels, "p6p7", separable,
        frozen_bn=frozen_bn, trainable_stages=trainable_stages, drop_path_rate=drop_path_rate, extractor=extractor,
    )
    return retinanet_on(fpn_backbone, num_classes, image_size, separable, **{**_normalisation(backbone), **kwargs})


def retinanet_on(
    fpn_backbone: nn.Module, num_classes: int, image_size: int = 384, separable: bool = True, **kwargs
) -> RetinaNet:
    """torchvision's RetinaNet over any 5-level FPN backbone (P3-P7), with the paper's separable head
    (``separable=True``) or torchvision's own; the same construction for every backbone, so detectors built with
    it compare like for like (benchmarks/detect_latency.py puts MobileNetV3 in the same place)."""
    anchors = retinanet_anchors()
    head = None
    if separable:
        head = SeparableRetinaNetHead(fpn_backbone.out_channels, anchors.num_anchors_per_location()[0], num_classes,
                                      num_levels=5)
    return RetinaNet(fpn_backbone, num_classes, min_size=image_size, max_size=image_size, anchor_generator=anchors,
                     head=head, **kwargs)


class SSDLiteFeatures(nn.Module):
    """torchvision's ``SSDLiteFeatureExtractorMobileNet`` on a MobileNetV4: the output of the 1x1 expansion inside the
    first /32 block (stride 16, e.g. 576 channels on Conv-S, 960 on Conv-M), the backbone's /32 output, then four
    extra blocks (1x1 -> 3x3 depthwise stride 2 -> 1x1) of 512/256/256/128 channels: six maps, OrderedDict "0".."5".

    The MobileNetV4 stays whole (``body``, timm's key names), so ImageNet weights load into it unchanged.
    """

    def __init__(self, body: MobileNetV4, norm_layer=SSD_NORM):
        super().__init__()
        from torchvision.models.detection.ssdlite import _extra_block, _normal_init

        strided = [i for i, stage in enumerate(body.spec.stages) if stage[0].stride > 1]
        self.split_stage = strided[-1]  # the stage that enters stride 32
        first = body.blocks[self.split_stage][0]
        if not isinstance(first, UniversalInvertedBottleneck) or first.has_skip:
            raise UserError(f"{body.spec.name}: SSDLite taps the expansion of a strided UIB entering stride 32, "
                            f"found {type(first).__name__}")
        self.body = body
        widths = [body.feature_info[-1].num_chs, 512, 256, 256, 128]
        self.extra = nn.ModuleList(_extra_block(a, b, norm_layer) for a, b in zip(widths, widths[1:], strict=False))
        _normal_init(self.extra)
        self.channels = [first.pw_exp.conv.out_channels, *widths]
        self.out_channels = list(self.channels)

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        body = self.body
        x = body.bn1(body.conv_stem(x))
        for stage in body.blocks[: self.split_stage]:
            x = stage(x)
        split = body.blocks[self.split_stage]
        first = split[0]
        c4 = first.pw_exp(first.dw_start(x))  # the strided block has no residual, so this is its whole forward
        x = first.layer_scale(first.pw_proj(first.dw_mid(c4)))
        for block in split[1:]:
            x = block(x)
        for stage in body.blocks[self.split_stage + 1 :]:
            x = stage(x)
        outputs = [c4, x]
        for block in self.extra:
            x = block(x)
            outputs.append(x)
        return OrderedDict((str(i), v) for i, v in enumerate(outputs))


def ssdlite_mobilenetv4(
    backbone: str | os.PathLike = "mobilenetv4_conv_small",
    num_classes: int = 91,
    pretrained_backbone: bool | str | os.PathLike = False,
    image_size: int = 320,
    frozen_bn: bool = False,
    trainable_stages: int | None = None,
    drop_path_rate: float = 0.0,
    **kwargs,
) -> SSD:
    """SSDLite with a MobileNetV4 backbone, torchvision's ``ssdlite320_mobilenet_v3_large`` recipe otherwise:
    ``DefaultBoxGenerator([[2, 3]] * 6, min_ratio=0.2, max_ratio=0.95)``, ``SSDLiteHead``, inputs resized to
    ``image_size`` squared, score threshold 0.001, NMS 0.55, 300 detections. Normalisation: the backbone tag's (timm's
    weights expect ImageNet mean/std, not torchvision MobileNetV3's [-1, 1])."""
    from ..factory import create_model

    _check_classes(num_classes)
    body = create_model(backbone, pretrained=pretrained_backbone, drop_path_rate=drop_path_rate, features_only=True)
    if trainable_stages is not None:
        freeze_stages(body, trainable_stages)
    if frozen_bn:
        freeze_batchnorm(body)
    features = SSDLiteFeatures(body)
    anchors = DefaultBoxGenerator([[2, 3] for _ in range(6)], min_ratio=0.2, max_ratio=0.95)
    head = SSDLiteHead(features.channels, anchors.num_anchors_per_location(), num_classes, SSD_NORM)
    defaults = {"score_thresh": 0.001, "nms_thresh": 0.55, "detections_per_img": 300, "topk_candidates": 300}
    options = {**defaults, **_normalisation(backbone), **kwargs}
    return SSD(features, anchors, (image_size, image_size), num_classes, head=head, **options)


def _check_classes(num_classes: int) -> None:
    if not isinstance(num_classes, int) or num_classes < 2:
        raise UserError(f"num_classes counts the background slot too, so it must be an int >= 2, got {num_classes!r}")


@dataclass
class DetectorSpec:
    """Everything needed to rebuild a detector from a weights file: stored as metadata next to the weights.

    ``categories``: the data set's ``[{"id": coco_id, "name": ...}]`` in label order (label i + 1 = categories[i]),
    so predictions map back to the data set's own (possibly non-contiguous) category ids.
    """

    arch: str = "retinanet"
    backbone: str = "mobilenetv4_conv_medium"
    num_classes: int = 91
    image_size: int | None = None  # None: the architecture's default (384 RetinaNet, 320 SSDLite)
    fpn_channels: int = 256  # RetinaNet's FPN and head width (the paper's 256)
    categories: list[dict] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.arch not in ARCHITECTURES:
            raise UserError(f"detector architecture must be one of {ARCHITECTURES}, got {self.arch!r}")

    @property
    def size(self) -> int:
        return self.image_size or DEFAULT_SIZES[self.arch]

    def to_dict(self) -> dict:
        return asdict(self)


def create_detector(spec: DetectorSpec, pretrained_backbone: bool | str | os.PathLike = False, **kwargs) -> nn.Module:
    """The detector ``spec`` describes (``kwargs``: builder options such as ``frozen_bn`` or ``score_thresh``)."""
    if spec.arch == "retinanet":
        return retinanet_mobilenetv4(
            spec.backbone, spec.num_classes, pretrained_backbone, spec.size, spec.fpn_channels, **kwargs
        )
    return ssdlite_mobilenetv4(spec.backbone, spec.num_classes, pretrained_backbone, spec.size, **kwargs)


SPEC_KEY = "mnv4_detector"  # safetensors metadata key holding the DetectorSpec as JSON


def save_detector(model: nn.Module, spec: DetectorSpec, path: str | os.PathLike) -> str:
    """Write ``model``'s weights as safetensors with ``spec`` in the metadata (``load_detector`` rebuilds it)."""
    import json

    from safetensors.torch import save_file

    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata={SPEC_KEY: json.dumps(spec.to_dict())})
    return str(path)


def load_detector(path: str | os.PathLike, **kwargs) -> tuple[nn.Module, DetectorSpec]:
    """A detector written by ``save_detector`` / ``mnv4 detect train`` (``model.safetensors``): the model (eval mode)
    and its spec (architecture, backbone, categories). ``kwargs`` override builder options (``score_thresh`` ...)."""
    import json

    from safetensors import safe_open
    from safetensors.torch import load_file

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UserError(f"detector weights {path!r} do not exist")
    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as err:  # safetensors raises its own error types for foreign/truncated files
        raise UserError(f"{path} is not a safetensors file: {type(err).__name__}: {err}") from None
    if SPEC_KEY not in meta:
        raise UserError(f"{path} has no detector description ({SPEC_KEY!r} metadata): write it with "
                        "mnv4.detection.save_detector or mnv4 detect train")
    spec = DetectorSpec(**json.loads(meta[SPEC_KEY]))
    model = create_detector(spec, **kwargs)
    model.load_state_dict(load_file(path))
    return model.eval(), spec
