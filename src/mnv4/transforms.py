"""The ImageNet evaluation protocol: ``data_config(model)`` -> ``eval_transform(cfg)``, and robust image loading.

Protocol (ecosystem §3.4, timm ``transforms_imagenet_eval``): resize the shorter side to ``floor(size / crop_pct)``
with the tag's interpolation, centre-crop ``size``, scale to [0, 1], normalise with the tag's mean/std. Built from
``torchvision.transforms.v2``; on PIL images it gives exactly the tensor timm's ``create_transform`` gives for the same
config (tested). MNv4 tags: bicubic, crop 0.95 (0.875 for the Conv-S 224 tags) at the train size, 1.0 at the larger
test size.

Without a tag (a model built directly from a spec) the config is that of the variant's default tag, as timm does for
an un-pretrained model; timm's global defaults (224, crop 0.875, bicubic here, ImageNet mean/std) only apply to
something that is no MobileNetV4 at all.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
from PIL import Image, ImageOps

from .specs import MIN_INPUT_SIZE, get_spec, is_spec_file
from .weights import IMAGENET_MEAN, IMAGENET_STD, default_cfg, default_tag, split_name

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
            raise ValueError(
                f"image size must be >= {MIN_INPUT_SIZE} px (MobileNetV4 downsamples by 32), got {h}x{w}"
            )
        if not 0.0 < self.crop_pct <= 1.0:
            raise ValueError(f"crop_pct must be in (0, 1], got {self.crop_pct}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {self.interpolation!r}")
        if len(self.mean) != c or len(self.std) != c:
            raise ValueError(f"mean/std need {c} values (one per input channel), got {self.mean} / {self.std}")

    @property
    def img_size(self) -> int:
        return self.input_size[-1]

    @property
    def resize_size(self) -> int:
        """Shorter side before the centre crop: ``floor(size / crop_pct)``, exactly as timm rounds it."""
        return math.floor(self.img_size / self.crop_pct)

    def __getitem__(self, key: str):
        return asdict(self)[key]

    def __iter__(self) -> Iterator[str]:
        return iter(asdict(self))

    def __len__(self) -> int:
        return len(asdict(self))

    def describe(self) -> str:
        return f"{self.img_size} px, crop_pct {self.crop_pct:g} (resize {self.resize_size}), {self.interpolation}"


def data_config(
    model_or_cfg: torch.nn.Module | Mapping | str,
    use_test_size: bool = False,
    img_size: int | None = None,
    crop_pct: float | None = None,
    interpolation: str | None = None,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
) -> DataConfig:
    """The evaluation config of a model (its ``pretrained_cfg``), a ``pretrained_cfg`` dict, or a ``variant.tag``.

    ``use_test_size``: the tag's larger ``test_input_size`` / ``test_crop_pct`` (when it has them; timm's
    ``use_test_size``). Explicit ``img_size`` / ``crop_pct`` / ... override the tag (timm's ``--img-size`` etc.).
    """
    in_chans = 3
    if isinstance(model_or_cfg, str):
        if is_spec_file(model_or_cfg):
            cfg = default_cfg(get_spec(model_or_cfg))
        else:
            arch, tag = split_name(model_or_cfg)  # unknown names / tags: the closest ones in the error
            cfg = (tag or default_tag(arch)).to_cfg()
    elif isinstance(model_or_cfg, torch.nn.Module):
        cfg = dict(getattr(model_or_cfg, "pretrained_cfg", None) or {})
        in_chans = getattr(model_or_cfg, "in_chans", 3)
        spec = getattr(model_or_cfg, "spec", None)
        if not cfg and spec is not None:  # built from a spec directly: its variant's default tag (timm's choice)
            cfg = default_cfg(spec)
    elif isinstance(model_or_cfg, Mapping):
        cfg = dict(model_or_cfg)
    else:
        raise ValueError(f"data_config takes a model, a pretrained_cfg dict or a tag name, got {model_or_cfg!r}")

    size = cfg.get("input_size") or (3, 224, 224)
    pct = cfg.get("crop_pct") or DEFAULT_CROP_PCT
    if use_test_size and cfg.get("test_input_size"):
        size = cfg["test_input_size"]
        pct = cfg.get("test_crop_pct") or pct
    if img_size is not None:
        size = (size[0], img_size, img_size)
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
            raise ValueError(f"expected an 8-bit image, got a {img.dtype} tensor")
        return img.to(torch.float32).div(255)


def eval_transform(cfg: DataConfig | Mapping):
    """PIL image (or uint8 CHW tensor) -> normalised float tensor, the ImageNet evaluation protocol for ``cfg``.

    Resize and crop come before the tensor conversion so PIL images use PIL's resampling, as timm does (that is what
    makes the output equal to timm's tensor for tensor).
    """
    from torchvision.transforms import InterpolationMode, v2

    if not isinstance(cfg, DataConfig):
        cfg = replace(DataConfig(), **{k: cfg[k] for k in cfg if k in DataConfig.__dataclass_fields__})
    _, h, w = cfg.input_size
    if h != w:
        raise ValueError(f"eval_transform supports square input sizes only, got {h}x{w}")
    if cfg.crop_mode != "center":
        raise ValueError(f"crop_mode {cfg.crop_mode!r} is not supported; the MNv4 protocol is 'center'")
    return v2.Compose(
        [
            v2.Resize(cfg.resize_size, interpolation=InterpolationMode(cfg.interpolation), antialias=True),
            v2.CenterCrop(cfg.img_size),
            v2.ToImage(),
            UInt8ToFloat(),
            v2.Normalize(mean=list(cfg.mean), std=list(cfg.std)),
        ]
    )


# ---------------------------------------------------------------------------------------------------- image loading
def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL image as 8-bit RGB, upright.

    EXIF orientation is applied; transparency is composited on WHITE (a transparent background reads as paper, not as
    black); CMYK / palette / greyscale convert as PIL does; 16- and 32-bit greyscale (``I;16``, ``I``) are scaled
    from their 16-bit range to 8 bits instead of being clipped; float images (``F``) are taken as 0..255.
    """
    img = ImageOps.exif_transpose(img)
    mode = img.mode
    if mode.startswith("I"):
        arr = np.asarray(img).astype(np.float64)
        img = Image.fromarray(np.clip(np.round(arr / 257.0), 0, 255).astype(np.uint8), "L")
    elif mode == "F":
        img = Image.fromarray(np.clip(np.round(np.asarray(img)), 0, 255).astype(np.uint8), "L")
    elif mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("RGB") if img.mode != "RGB" else img


def load_image(path: str | os.PathLike) -> Image.Image:
    """Open an image file as upright 8-bit RGB (see ``to_rgb``); a file PIL cannot read raises one ValueError."""
    from PIL import UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()
            return to_rgb(img)
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        if isinstance(err, FileNotFoundError):
            raise FileNotFoundError(f"{path}: no such file") from None
        raise ValueError(f"{path}: not a readable image ({type(err).__name__}: {err})") from None
