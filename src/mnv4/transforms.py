"""The ImageNet evaluation protocol: ``data_config(model)`` -> ``eval_transform(cfg)``, the one preprocessing of
``mnv4 predict``, ``mnv4 eval`` and export's calibration and ``--eval`` (images are read by ``mnv4.images``).

Protocol (timm's ``transforms_imagenet_eval``, see docs/weights.md): resize the shorter side to
``floor(size / crop_pct)`` with the tag's interpolation, centre-crop ``size``, scale to [0, 1], normalise with the
tag's mean/std. A non-square ``H x W`` scales the image, keeping its aspect ratio, until it covers
``floor(H / crop_pct) x floor(W / crop_pct)``, then centre-crops, as timm does. Built from
``torchvision.transforms.v2``; on PIL images it gives exactly the tensor timm's ``create_transform`` gives for the
same config (tested). MNv4 tags: bicubic, crop 0.95 (0.875 for the Conv-S 224 tags) at the train size, 1.0 at the
larger test size.

Without a tag (a model built directly from a spec) the config is that of the variant's default tag, as timm does for
an un-pretrained model; timm's global defaults (224, crop 0.875, bicubic here, ImageNet mean/std) only apply to
something that is no MobileNetV4 at all.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, replace

import torch

from .errors import UserError
from .specs import MIN_INPUT_SIZE, get_spec, is_spec_file
from .weights import IMAGENET_MEAN, IMAGENET_STD, default_cfg, split_name

DEFAULT_CROP_PCT = 0.875  # timm's DEFAULT_CROP_PCT, the classic ImageNet crop
INTERPOLATIONS = ("bicubic", "bilinear", "nearest")


@dataclass(frozen=True)
class DataConfig(Mapping):
    """What the evaluation transform needs. Also a read-only mapping with timm's keys, so
    ``timm.data.create_transform(**cfg)`` accepts it as it is."""

    input_size: tuple[int, int, int] = (3, 224, 224)
    interpolation: str = "bicubic"
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    crop_pct: float = DEFAULT_CROP_PCT
    crop_mode: str = "center"

    def __post_init__(self):
        c, h, w = self.input_size
        if min(h, w) < MIN_INPUT_SIZE:
            raise UserError(
                f"image size must be >= {MIN_INPUT_SIZE} px (MobileNetV4 downsamples by 32), got {h}x{w}"
            )
        if not 0.0 < self.crop_pct <= 1.0:
            raise UserError(f"crop_pct must be in (0, 1], got {self.crop_pct}")
        if self.interpolation not in INTERPOLATIONS:
            raise UserError(f"interpolation must be one of {INTERPOLATIONS}, got {self.interpolation!r}")
        if len(self.mean) != c or len(self.std) != c:
            raise UserError(f"mean/std need {c} values (one per input channel), got {self.mean} / {self.std}")

    @property
    def img_size(self) -> int:
        """The side of a square input (the width of a non-square one)."""
        return self.input_size[-1]

    @property
    def resize_size(self) -> int | tuple[int, int]:
        """Before the centre crop: the shorter side ``floor(size / crop_pct)`` (square input), or the ``(H, W)`` the
        image is scaled to cover (non-square input); rounded down exactly as timm rounds it."""
        _, h, w = self.input_size
        scaled = (math.floor(h / self.crop_pct), math.floor(w / self.crop_pct))
        return scaled[0] if h == w else scaled

    def __getitem__(self, key: str):
        return asdict(self)[key]

    def __iter__(self) -> Iterator[str]:
        return iter(asdict(self))

    def __len__(self) -> int:
        return len(asdict(self))

    def describe(self) -> str:
        _, h, w = self.input_size
        size, resize = (f"{h}", self.resize_size) if h == w else (f"{h}x{w}", "x".join(map(str, self.resize_size)))
        return f"{size} px, crop_pct {self.crop_pct:g} (resize {resize}), {self.interpolation}"


def data_config(
    model_or_cfg: torch.nn.Module | Mapping | str,
    use_test_size: bool = False,
    img_size: int | tuple[int, int] | None = None,
    crop_pct: float | None = None,
    interpolation: str | None = None,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
) -> DataConfig:
    """The evaluation config of a model (its ``pretrained_cfg``), a ``pretrained_cfg`` dict, or a ``variant.tag``.

    ``use_test_size``: the tag's larger ``test_input_size`` / ``test_crop_pct`` (when it has them; timm's
    ``use_test_size``). Explicit ``img_size`` (a side, or ``(H, W)``) / ``crop_pct`` / ... override the tag (timm's
    ``--img-size`` etc.).
    """
    in_chans = 3
    if isinstance(model_or_cfg, str):
        if is_spec_file(model_or_cfg):
            cfg = default_cfg(get_spec(model_or_cfg))
        else:
            arch, tag = split_name(model_or_cfg)  # unknown names / tags: the closest ones in the error
            cfg = tag.to_cfg() if tag else default_cfg(get_spec(arch))  # a variant with no tag: the MNv4 protocol
    elif isinstance(model_or_cfg, torch.nn.Module):
        cfg = dict(getattr(model_or_cfg, "pretrained_cfg", None) or {})
        in_chans = getattr(model_or_cfg, "in_chans", 3)
        spec = getattr(model_or_cfg, "spec", None)
        if not cfg and spec is not None:  # built from a spec directly: its variant's default tag (timm's choice)
            cfg = default_cfg(spec)
    elif isinstance(model_or_cfg, Mapping):
        cfg = dict(model_or_cfg)
    else:
        raise UserError(f"data_config takes a model, a pretrained_cfg dict or a tag name, got {model_or_cfg!r}")

    size = cfg.get("input_size") or (3, 224, 224)
    pct = cfg.get("crop_pct") or DEFAULT_CROP_PCT
    if use_test_size and cfg.get("test_input_size"):
        size = cfg["test_input_size"]
        pct = cfg.get("test_crop_pct") or pct
    if img_size is not None:
        size = (size[0], *((img_size, img_size) if isinstance(img_size, int) else tuple(img_size)))
    cfg_mean, cfg_std = tuple(cfg.get("mean") or IMAGENET_MEAN), tuple(cfg.get("std") or IMAGENET_STD)
    config = DataConfig(
        input_size=(in_chans, *tuple(size)[1:]),
        interpolation=interpolation or cfg.get("interpolation") or "bicubic",
        mean=tuple(mean) if mean else _per_channel(cfg_mean, in_chans),
        std=tuple(std) if std else _per_channel(cfg_std, in_chans),
        crop_pct=crop_pct if crop_pct is not None else pct,
    )
    return config


def _per_channel(values: tuple[float, ...], in_chans: int) -> tuple[float, ...]:
    if len(values) == in_chans:
        return values
    if in_chans == 1:  # a grey model made from RGB weights: the mean of the RGB statistics
        return (sum(values) / len(values),)
    return tuple(values[i % len(values)] for i in range(in_chans))


class UInt8ToFloat(torch.nn.Module):
    """uint8 [0, 255] -> float32 [0, 1] by dividing by 255, as ``ToTensor`` does (``v2.ToDtype(scale=True)``
    multiplies by 1/255, which differs in the last bit and would break tensor-for-tensor equality with timm)."""

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        if img.dtype != torch.uint8:
            raise UserError(f"expected an 8-bit image, got a {img.dtype} tensor")
        return img.to(torch.float32).div(255)


class ResizeToCover(torch.nn.Module):
    """Scale an image, keeping its aspect ratio, to the smallest size that covers ``(H, W)``: timm's
    ``ResizeKeepRatio`` (longest=0), which its evaluation transform uses for non-square sizes."""

    def __init__(self, size: tuple[int, int], interpolation):
        super().__init__()
        self.size, self.interpolation = tuple(size), interpolation

    def forward(self, img):
        from torchvision.transforms.v2 import functional as F

        img_h, img_w = F.get_size(img)
        ratio = min(img_h / self.size[0], img_w / self.size[1])
        size = [round(img_h / ratio), round(img_w / ratio)]
        return F.resize(img, size, interpolation=self.interpolation, antialias=True)


def eval_transform(cfg: DataConfig | Mapping):
    """PIL image (or uint8 CHW tensor) -> normalised float tensor, the ImageNet evaluation protocol for ``cfg``.

    Resize and crop come before the tensor conversion so PIL images use PIL's resampling, as timm does (that is what
    makes the output equal to timm's tensor for tensor).
    """
    from torchvision.transforms import InterpolationMode, v2

    if not isinstance(cfg, DataConfig):
        cfg = replace(DataConfig(), **{k: cfg[k] for k in cfg if k in DataConfig.__dataclass_fields__})
    _, h, w = cfg.input_size
    if cfg.crop_mode != "center":
        raise UserError(f"crop_mode {cfg.crop_mode!r} is not supported; the MNv4 protocol is 'center'")
    interpolation = InterpolationMode(cfg.interpolation)
    if h == w:
        resize = v2.Resize(cfg.resize_size, interpolation=interpolation, antialias=True)
    else:
        resize = ResizeToCover(cfg.resize_size, interpolation)
    return v2.Compose(
        [
            resize,
            v2.CenterCrop((h, w)),
            v2.ToImage(),
            UInt8ToFloat(),
            v2.Normalize(mean=list(cfg.mean), std=list(cfg.std)),
        ]
    )


def randaugment_magnitude(tf_magnitude: float) -> int:
    """TF's RandAugment level (0..10, where 10 is each op's maximum) -> torchvision's bin with 11 bins.

    torchvision's op maxima equal TF's at level 10 (rotate 30 deg, shear 0.3, enhance 1 +- 0.9, posterize 4 bits,
    solarize 0); TF extrapolates levels above 10 (the paper's m15 rotates up to 45 deg), torchvision cannot, so
    levels above 10 are clamped to 10. Translation differs: TF uses a fixed pixel constant, torchvision 45% of size.
    """
    return int(min(max(round(tf_magnitude), 0), 10))
