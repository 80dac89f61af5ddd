"""The evaluation protocol (data_config -> eval_transform) against timm. Image loading: tests/test_images.py."""

import numpy as np
import pytest
import torch
from PIL import Image

import mnv4
from mnv4.transforms import DataConfig, data_config, eval_transform
from mnv4.weights import TAGS


def photo(h=300, w=411, seed=0) -> Image.Image:
    """A smooth image with edges (gradients + a disc), so resampling differences would show."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([xx * 255 / w, yy * 255 / h, 128 + 100 * np.sin(xx / 13.0) * np.cos(yy / 7.0)], -1)
    img[(yy - h / 2) ** 2 + (xx - w / 3) ** 2 < (h / 4) ** 2] = (250, 30, 60)
    img += rng.normal(0, 6, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


def test_data_config_matches_timm_for_every_tag(timm):
    from timm.data import resolve_data_config
    from timm.models import get_pretrained_cfg

    for t in TAGS:
        for test_size in (False, True):
            ref = resolve_data_config(pretrained_cfg=get_pretrained_cfg(t.name).to_dict(), use_test_size=test_size)
            assert dict(data_config(t.name, use_test_size=test_size)) == ref, (t.name, test_size)


@pytest.mark.parametrize(
    "tag, test_size",
    [
        ("mobilenetv4_conv_small.e2400_r224_in1k", False),  # crop 0.875, resize 256
        ("mobilenetv4_conv_small.e2400_r224_in1k", True),  # 256 px, crop 0.95 -> resize floor(269.47) = 269
        ("mobilenetv4_conv_small.e3600_r256_in1k", False),  # mean/std 0.5
        ("mobilenetv4_hybrid_medium.ix_e550_r256_in1k", True),  # crop 1.0 at 320
        ("mobilenetv4_conv_medium.e180_r384_in12k", False),  # 12k tag, crop 1.0
    ],
)
def test_eval_transform_equals_timm_create_transform(timm, tag, test_size):
    from timm.data import create_transform

    cfg = data_config(tag, use_test_size=test_size)
    for img in (photo(), photo(517, 333, seed=1)):  # landscape and portrait
        ours, ref = eval_transform(cfg)(img), create_transform(**cfg)(img)
        assert ours.shape == (3, cfg.img_size, cfg.img_size)
        assert torch.equal(ours, ref)


@pytest.mark.parametrize("hw", [(64, 96), (96, 64), (224, 160)])
def test_non_square_sizes_equal_timm_create_transform(timm, hw):
    """Export and calibration use --size H W: timm scales the image to cover floor(H / crop) x floor(W / crop),
    keeping its aspect ratio, then centre-crops."""
    from timm.data import create_transform

    model = mnv4.create_model("mobilenetv4_conv_small")
    cfg = data_config(model, img_size=hw)
    assert cfg.input_size == (3, *hw) and "x" in cfg.describe()
    for img in (photo(), photo(517, 333, seed=1)):
        ours, ref = eval_transform(cfg)(img), create_transform(**cfg)(img)
        assert ours.shape == (3, *hw)
        assert torch.equal(ours, ref)


def test_resize_rounds_down_as_timm():
    assert data_config("mobilenetv4_conv_small.e2400_r224_in1k").resize_size == 256
    assert data_config("mobilenetv4_conv_small.e2400_r224_in1k", use_test_size=True).resize_size == 269
    assert data_config("mobilenetv4_hybrid_large.e600_r384_in1k").resize_size == 404  # 384 / 0.95 = 404.2
    cfg = data_config("mobilenetv4_conv_large.e600_r384_in1k", use_test_size=True)
    assert (cfg.img_size, cfg.crop_pct, cfg.resize_size) == (448, 1.0, 448)


def test_data_config_of_models_and_overrides():
    model = mnv4.create_model("mobilenetv4_hybrid_medium")  # untagged: default tag, as timm
    cfg = data_config(model)
    assert (cfg.img_size, cfg.crop_pct, cfg.interpolation, cfg.mean) == (256, 0.95, "bicubic", (0.485, 0.456, 0.406))
    bare = mnv4.MobileNetV4(mnv4.MODEL_SPECS["mobilenetv4_conv_small_050"])  # no pretrained_cfg at all
    assert data_config(bare).mean == (0.5, 0.5, 0.5)
    over = data_config(model, use_test_size=True, img_size=288, crop_pct=0.9)
    assert (over.img_size, over.crop_pct) == (288, 0.9)
    grey = data_config(mnv4.create_model("mobilenetv4_conv_small", in_chans=1))
    assert grey.input_size == (1, 224, 224) and len(grey.mean) == 1
    assert data_config(dict(model.pretrained_cfg)) == cfg
    with pytest.raises(ValueError, match="crop_pct"):
        DataConfig(crop_pct=1.5)
    with pytest.raises(ValueError, match="unknown pretrained tag"):
        data_config("mobilenetv4_conv_small.nope")
