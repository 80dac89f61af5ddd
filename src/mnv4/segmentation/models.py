"""Segmenters with a MobileNetV4 backbone, assembled from torchvision's segmentation models.

- ``lraspp_mobilenetv4``: torchvision's ``LRASPP`` (MobileNetV3 paper §6.3; ``lraspp_mobilenet_v3_large``): a 128-d
  1x1 conv on the last map, gated by a pooled sigmoid branch, upsampled to the /8 map and added to a 1x1 classifier
  of that map. The backbone's last map is the 1x1 conv to 960 (448 on ConvMediumSeg), run at output stride 16.
- ``deeplabv3_mobilenetv4``: torchvision's ``DeepLabV3`` with ``DeepLabHead`` (ASPP: 1x1, three 3x3 atrous convs
  and image pooling at 256 channels, then a 3x3 conv) on the last map, and optionally (``aux``) torchvision's
  ``FCNHead`` on the /8 map for an auxiliary loss (``deeplabv3_mobilenet_v3_large``'s layout).

torchvision supplies the heads and the forward (``{"out": logits at the input size}``, plus ``"aux"``); this module
supplies the backbone as torchvision's segmentation models want it (an ``OrderedDict`` of named maps) and the
``SegmenterSpec`` stored next to the weights. Inputs are normalised images (the spec's ``mean``/``std``, the
backbone tag's), as torchvision's segmentation models take them.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields

import torch
from torch import nn
from torchvision.models.segmentation.deeplabv3 import DeepLabHead, DeepLabV3
from torchvision.models.segmentation.fcn import FCNHead
from torchvision.models.segmentation.lraspp import LRASPP

from ..errors import UserError
from ..factory import create_model
from ..model import OUTPUT_STRIDES, MobileNetV4
from ..specs import ModelSpec, get_spec, is_spec_file, spec_from_dict, spec_to_dict

ARCHITECTURES = ("lraspp", "deeplabv3")
LOW_LEVEL = 2  # the /8 map: LR-ASPP's low-level input and DeepLabV3's aux input (torchvision's "C2" on MobileNetV3)
LAST_LEVEL = 4  # the last map (the 1x1 conv to 960 / 448), at the output stride
# DeepLabV3's ASPP rates per output stride: the paper's (6, 12, 18) at 16 and doubled at 8 (Chen et al., 2017, §4.1);
# halved again at 32. torchvision's deeplabv3_mobilenet_v3_large keeps (12, 24, 36) at output stride 16.
ATROUS_RATES = {8: (12, 24, 36), 16: (6, 12, 18), 32: (3, 6, 9)}


class MobileNetV4Features(nn.Module):
    """A ``features_only`` MobileNetV4 whose maps come out named, ``OrderedDict(name -> map)``: what torchvision's
    segmentation models read from a backbone (LR-ASPP ``"low"``/``"high"``, DeepLabV3 ``"out"``/``"aux"``).

    ``body`` stays a whole MobileNetV4 (timm's key names), so classification weights load into it unchanged.
    ``channels``: the width of each named map.
    """

    def __init__(self, body: MobileNetV4, names: Sequence[str]):
        super().__init__()
        if not body.features_only or len(names) != len(body.out_indices):
            raise ValueError("MobileNetV4Features takes a features_only MobileNetV4 and one name per level")
        self.body = body
        self.names = tuple(names)
        self.channels = dict(zip(self.names, body.feature_info.channels(), strict=True))

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        return OrderedDict(zip(self.names, self.body(x), strict=True))


def mobilenetv4_features(
    backbone: str | os.PathLike | ModelSpec,
    levels: dict[int, str],
    pretrained: bool | str | os.PathLike = False,
    output_stride: int = 16,
    drop_path_rate: float = 0.0,
) -> MobileNetV4Features:
    """The maps of ``levels`` ({level: name}; 0-4 = strides 2, 4, 8, 16, 32 before dilation) of a MobileNetV4
    running at ``output_stride``; ``backbone``/``pretrained`` as ``mnv4.create_model`` takes them (any variant or
    tag, a spec file; ImageNet weights by tag or from a file, without their classifier)."""
    order = sorted(levels)
    body = create_model(backbone, pretrained=pretrained, features_only=True, out_indices=tuple(order),
                        output_stride=output_stride, drop_path_rate=drop_path_rate)
    return MobileNetV4Features(body, [levels[i] for i in order])


def lraspp_mobilenetv4(
    backbone: str | os.PathLike | ModelSpec = "mobilenetv4_conv_medium",
    num_classes: int = 21,
    pretrained_backbone: bool | str | os.PathLike = False,
    output_stride: int = 16,
    inter_channels: int = 128,
    drop_path_rate: float = 0.0,
) -> LRASPP:
    """torchvision's LR-ASPP on a MobileNetV4: "low" = the /8 map, "high" = the last map at ``output_stride``
    (16, as ``lraspp_mobilenet_v3_large``). ``num_classes`` includes the background class, as torchvision's."""
    _check_classes(num_classes)
    features = mobilenetv4_features(backbone, {LOW_LEVEL: "low", LAST_LEVEL: "high"}, pretrained_backbone,
                                    output_stride, drop_path_rate)
    return LRASPP(features, features.channels["low"], features.channels["high"], num_classes, inter_channels)


def deeplabv3_mobilenetv4(
    backbone: str | os.PathLike | ModelSpec = "mobilenetv4_conv_medium",
    num_classes: int = 21,
    pretrained_backbone: bool | str | os.PathLike = False,
    output_stride: int = 16,
    aux: bool = False,
    atrous_rates: Sequence[int] | None = None,
    drop_path_rate: float = 0.0,
) -> DeepLabV3:
    """torchvision's DeepLabV3 (``DeepLabHead``: ASPP + 3x3 conv) on the last map of a MobileNetV4 at
    ``output_stride``; ``aux=True`` adds torchvision's ``FCNHead`` on the /8 map (its output ``"aux"``, for an
    auxiliary loss in training, as ``deeplabv3_mobilenet_v3_large(aux_loss=True)``). ``atrous_rates``: None = by
    output stride (``ATROUS_RATES``)."""
    _check_classes(num_classes)
    levels = {LAST_LEVEL: "out", **({LOW_LEVEL: "aux"} if aux else {})}
    features = mobilenetv4_features(backbone, levels, pretrained_backbone, output_stride, drop_path_rate)
    rates = tuple(atrous_rates or ATROUS_RATES[output_stride])
    head = DeepLabHead(features.channels["out"], num_classes, rates)
    aux_head = FCNHead(features.channels["aux"], num_classes) if aux else None
    return DeepLabV3(features, head, aux_head)


def _check_classes(num_classes: int) -> None:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise UserError(f"num_classes must be an int >= 2 (the background counts as a class), got {num_classes!r}")


# ---------------------------------------------------------------------------------------------------- the spec
def voc_palette(num_classes: int) -> list[list[int]]:
    """Pascal VOC's colour map: class c gets the bits of c spread over R, G, B from the high bit down (0 = black,
    1 = (128, 0, 0), 2 = (0, 128, 0), 3 = (128, 128, 0), ...), the colours of VOC's own palette PNGs."""
    colours = []
    for c in range(num_classes):
        rgb, value = [0, 0, 0], c
        for shift in range(7, -1, -1):
            for channel in range(3):
                rgb[channel] |= ((value >> channel) & 1) << shift
            value >>= 3
        colours.append(rgb)
    return colours


@dataclass
class SegmenterSpec:
    """Everything needed to rebuild a segmenter and read its output, stored as metadata next to the weights.

    ``num_classes`` counts every label the model predicts (the background too); ``ignore_index`` (255) marks pixels
    no loss or metric sees, so labels run 0..num_classes-1 < ``ignore_index``. ``classes``: names in label order
    (empty: "class 0", ...); ``palette``: an RGB triple per class for drawn masks (empty: VOC's colours).
    ``image_size``: the side of the shorter edge evaluation and prediction resize to (and training's default crop).
    ``mean``/``std``: the input normalisation (None: the backbone tag's, filled in on creation). ``aux``: DeepLabV3
    only, the FCN head on the /8 map. ``atrous_rates``: DeepLabV3's ASPP rates (None: by output stride).
    ``backbone_spec``: the layer table of a spec-file backbone (``mnv4.specs.spec_to_dict``), filled in on creation
    from the file ``backbone`` names, so that saved weights rebuild without it. ``categories``: for a segmenter
    trained on COCO, the category id of each label 1..K (evaluation reads a COCO file the same way).
    """

    arch: str = "lraspp"
    backbone: str = "mobilenetv4_conv_medium"
    num_classes: int = 21
    output_stride: int = 16
    image_size: int = 512
    inter_channels: int = 128
    aux: bool = False
    atrous_rates: list[int] | None = None
    classes: list[str] = field(default_factory=list)
    palette: list[list[int]] = field(default_factory=list)
    ignore_index: int = 255
    mean: list[float] | None = None
    std: list[float] | None = None
    backbone_spec: dict | None = None
    categories: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        from ..transforms import data_config
        from ..weights import default_cfg

        if self.arch not in ARCHITECTURES:
            raise UserError(f"segmenter architecture must be one of {ARCHITECTURES}, got {self.arch!r}")
        _check_classes(self.num_classes)
        if self.output_stride not in OUTPUT_STRIDES:
            raise UserError(f"output_stride must be one of {OUTPUT_STRIDES}, got {self.output_stride!r}")
        if not isinstance(self.ignore_index, int) or not self.num_classes <= self.ignore_index:
            raise UserError(f"ignore_index ({self.ignore_index!r}) must be an int >= num_classes "
                            f"({self.num_classes}): labels 0..{self.num_classes - 1} are classes")
        if self.aux and self.arch != "deeplabv3":
            raise UserError("aux (the FCN head on the /8 map) is DeepLabV3's; LR-ASPP has none")
        if self.classes and len(self.classes) != self.num_classes:
            raise UserError(f"{len(self.classes)} class names for {self.num_classes} classes")
        if self.palette and (len(self.palette) != self.num_classes or
                             not all(len(c) == 3 and all(0 <= int(v) <= 255 for v in c) for c in self.palette)):
            raise UserError(f"palette must give {self.num_classes} RGB triples in 0..255")
        if not isinstance(self.image_size, int) or self.image_size < 32:
            raise UserError(f"image_size must be an int >= 32, got {self.image_size!r}")
        if self.categories and len(self.categories) != self.num_classes - 1:
            raise UserError(f"{len(self.categories)} COCO categories for labels 1..{self.num_classes - 1}")
        if self.backbone_spec is None and is_spec_file(self.backbone):  # the table travels with the weights
            self.backbone_spec = spec_to_dict(get_spec(self.backbone))
        if self.mean is None or self.std is None:
            source = self.backbone_model()
            cfg = data_config(default_cfg(source) if isinstance(source, ModelSpec) else source)
            self.mean = list(cfg.mean) if self.mean is None else self.mean
            self.std = list(cfg.std) if self.std is None else self.std

    def backbone_model(self) -> str | ModelSpec:
        """What ``mnv4.create_model`` builds the backbone from: the embedded table of a spec-file backbone (the
        file need not exist any more), else the variant or tag name."""
        if self.backbone_spec is not None:
            return spec_from_dict(self.backbone_spec, f"the backbone table of segmenter {self.backbone!r}")
        return os.fspath(self.backbone)

    def class_names(self) -> list[str]:
        return list(self.classes) or [f"class {i}" for i in range(self.num_classes)]

    def colours(self) -> list[list[int]]:
        return [list(c) for c in self.palette] or voc_palette(self.num_classes)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict, source: str = "segmenter spec") -> SegmenterSpec:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UserError(f"{source}: unknown field(s) {', '.join(unknown)}; a segmenter spec has "
                            f"{', '.join(sorted(known))}")
        return cls(**data)


def create_segmenter(spec: SegmenterSpec, pretrained_backbone: bool | str | os.PathLike = False,
                     drop_path_rate: float = 0.0) -> nn.Module:
    """The segmenter ``spec`` describes; ``pretrained_backbone`` loads ImageNet weights into its backbone."""
    backbone = spec.backbone_model()
    if spec.arch == "lraspp":
        return lraspp_mobilenetv4(backbone, spec.num_classes, pretrained_backbone, spec.output_stride,
                                  spec.inter_channels, drop_path_rate)
    return deeplabv3_mobilenetv4(backbone, spec.num_classes, pretrained_backbone, spec.output_stride, spec.aux,
                                 spec.atrous_rates, drop_path_rate)


SPEC_KEY = "mnv4_segmenter"  # safetensors metadata key holding the SegmenterSpec as JSON


def save_segmenter(model: nn.Module, spec: SegmenterSpec, path: str | os.PathLike) -> str:
    """Write ``model``'s weights as safetensors with ``spec`` in the metadata (``load_segmenter`` rebuilds it)."""
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, os.fspath(path), metadata={SPEC_KEY: json.dumps(spec.to_dict())})
    return os.fspath(path)


def segmenter_spec(path: str | os.PathLike) -> SegmenterSpec:
    """The spec ``save_segmenter`` stored in ``path``'s metadata (the weights are not read)."""
    from safetensors import safe_open

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UserError(f"segmenter weights {path!r} do not exist")
    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as err:  # safetensors raises its own error types for foreign/truncated files
        raise UserError(f"{path} is not a safetensors file: {type(err).__name__}: {err}") from None
    if SPEC_KEY not in meta:
        raise UserError(f"{path} has no segmenter description ({SPEC_KEY!r} metadata): write it with "
                        "mnv4.segmentation.save_segmenter")
    try:
        data = json.loads(meta[SPEC_KEY])
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: the {SPEC_KEY!r} metadata is not JSON ({err})") from None
    return SegmenterSpec.from_dict(data, path)


def load_segmenter(path: str | os.PathLike) -> tuple[nn.Module, SegmenterSpec]:
    """A segmenter written by ``save_segmenter``: the model (eval mode) and its spec."""
    from safetensors.torch import load_file

    spec = segmenter_spec(path)
    model = create_segmenter(spec)
    try:
        model.load_state_dict(load_file(path))
    except RuntimeError as err:  # torch lists every key; the first line says what kind of mismatch it is
        raise UserError(f"{path}: the weights do not fit the segmenter its metadata describes "
                        f"({str(err).strip().splitlines()[0]})") from None
    return model.eval(), spec
