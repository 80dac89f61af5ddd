"""Input pipelines: robust decoding, per-sample reproducible augmentation, rank/accumulation sharding, mixing, the
GPU pipeline's code run on the CPU, and validation through the model's evaluation protocol."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from mnv4.engine.seeds import MicroBatchSampler, ShardSampler
from mnv4.train.config import TrainConfig
from mnv4.train.data import (
    CROP_PARAMS,
    BadFileLog,
    BatchMix,
    EncodedImageDataset,
    GpuAugment,
    ImageFolderDataset,
    collate,
    load_rgb,
    random_resized_crop_box,
    to_rgb,
    train_transform,
)
from mnv4.weights import IMAGENET_MEAN, IMAGENET_STD

BAD_FILES = ("corrupt.jpg", "truncated.jpg", "empty.png")


def aug_config(**kw) -> TrainConfig:
    """A config as a run resolves it (a run fills mean/std from the model's data config)."""
    return TrainConfig(mean=IMAGENET_MEAN, std=IMAGENET_STD, **kw)


def _digit_like(seed: int, size: int = 40) -> np.ndarray:
    """A smooth random image (upsampled 6x6 noise), so that resampling methods agree closely."""
    rng = np.random.default_rng(seed)
    small = Image.fromarray((rng.random((6, 6, 3)) * 255).astype(np.uint8))
    return np.asarray(small.resize((size + 8, size), Image.BICUBIC))


@pytest.fixture(scope="module")
def messy_folder(tmp_path_factory):
    """One class folder with every awkward kind of file: CMYK, greyscale, RGBA, palette+transparency and 16-bit
    images that must decode, and corrupt / truncated / empty files that must be skipped."""
    root = tmp_path_factory.mktemp("messy")
    a, b = root / "a", root / "b"
    a.mkdir()
    b.mkdir()
    Image.fromarray(_digit_like(0)).save(a / "rgb.jpg", quality=90)
    Image.fromarray(_digit_like(1)).convert("CMYK").save(a / "cmyk.jpg")
    Image.fromarray(_digit_like(2)).convert("L").save(a / "grey.png")
    rgba = Image.fromarray(_digit_like(3)).convert("RGBA")
    rgba.putalpha(128)
    rgba.save(a / "rgba.png")
    Image.fromarray(_digit_like(4)).convert("P").save(b / "palette.png", transparency=0)
    sixteen = (np.arange(40 * 48, dtype=np.uint16).reshape(40, 48) * 30).astype(np.uint16)
    Image.fromarray(sixteen).save(b / "sixteen.png")
    (b / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg at all" * 10)
    good = (a / "rgb.jpg").read_bytes()
    (b / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (b / "empty.png").write_bytes(b"")
    Image.fromarray(_digit_like(5)).save(b / "z_last.png")
    return root


def test_awkward_images_decode_to_rgb(messy_folder):
    for name in ("a/rgb.jpg", "a/cmyk.jpg", "a/grey.png", "a/rgba.png", "b/palette.png", "b/sixteen.png"):
        image = load_rgb(messy_folder / name)
        assert image.mode == "RGB" and image.size == (48, 40), name
    # 16-bit: rescaled, not clipped to white (PIL's own conversion would give 255 almost everywhere)
    sixteen = np.asarray(load_rgb(messy_folder / "b/sixteen.png"))[..., 0]
    assert 0 < sixteen.mean() < 200 and sixteen.max() <= 255
    # 16-bit mapping: 65535 -> 255, 0 -> 0
    ramp = Image.fromarray(np.array([[0, 65535]], dtype=np.uint16))
    assert np.asarray(to_rgb(ramp))[0, :, 0].tolist() == [0, 255]
    # RGBA composited on white: half-transparent pixels move halfway to white
    rgba_src = _digit_like(3).astype(float)
    rgba = np.asarray(load_rgb(messy_folder / "a/rgba.png")).astype(float)
    assert np.abs(rgba - (rgba_src * 128 + 255 * 127) / 255).max() <= 1.5


def test_bad_files_are_skipped_and_logged_once(messy_folder, caplog):
    cfg = aug_config(crop_scale_min=0.5)
    dataset = ImageFolderDataset(messy_folder, train_transform(32, cfg), seed=0)
    assert len(dataset) == 10
    bad_log = BadFileLog()
    with caplog.at_level(logging.WARNING, logger="mnv4"):
        for epoch, workers in ((0, 0), (1, 2)):  # the second epoch through worker processes
            sampler = MicroBatchSampler(len(dataset), 5, 1, 0, 1, seed=0, epoch=epoch)
            loader = torch.utils.data.DataLoader(
                dataset, batch_sampler=sampler, num_workers=workers, collate_fn=collate
            )
            seen = 0
            for images, labels, indices, _, bad in loader:
                bad_log(bad)
                assert images.shape == (5, 3, 32, 32) and torch.isfinite(images).all()
                assert all(not dataset.samples[i][0].endswith(BAD_FILES) for i in indices.tolist())
                seen += len(labels)
            assert seen == 10
    lines = [r.getMessage() for r in caplog.records if r.name == "mnv4.engine"]
    assert len(lines) == len(BAD_FILES), lines
    for name in BAD_FILES:
        assert sum(name in line for line in lines) == 1


def test_augmentation_is_a_function_of_seed_epoch_and_index(messy_folder):
    cfg = aug_config(randaug_layers=2, randaug_magnitude=9, randaug_prob=0.5)
    dataset = ImageFolderDataset(messy_folder, train_transform(32, cfg), seed=7)
    torch.manual_seed(123)
    first = dataset[(3, 0)][0]
    torch.rand(100)  # the global generator state must not matter
    assert torch.equal(first, dataset[(3, 0)][0])
    assert not torch.equal(first, dataset[(4, 0)][0])
    other_seed = ImageFolderDataset(messy_folder, train_transform(32, cfg), seed=8)
    assert not torch.equal(first, other_seed[(3, 0)][0])
    # and it leaves the caller's generator untouched
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    dataset[(1, 1)]
    assert torch.equal(torch.rand(3), expected)


def test_validation_is_the_eval_protocol_in_both_pipelines(messy_folder, tmp_path):
    """Training validation scores the tensors ``mnv4 eval`` scores: ``eval_transform(data_config(model, img_size))``
    (Conv-S: bicubic, crop 0.875, ImageNet mean/std), in the CPU and in the GPU pipeline; the recipe can override the
    crop and interpolation; an undecodable validation file is skipped, not replaced by its neighbour."""
    import shutil

    import mnv4
    from mnv4 import data_config, eval_transform, load_image  # the loader and protocol of mnv4 eval
    from mnv4.engine.distributed import DistContext
    from mnv4.train.inputs import TrainInputs, resolve_model_defaults

    for split in ("train", "val"):
        for name in ("a/rgb.jpg", "a/grey.png", "b/z_last.png", "b/corrupt.jpg"):
            (tmp_path / split / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(messy_folder / name, tmp_path / split / name)
    model = mnv4.create_model("mobilenetv4_conv_small", num_classes=2)
    for overrides, expected in (
        ({}, data_config(model, img_size=48)),
        (dict(val_crop_pct=1.0, val_interpolation="bilinear"), data_config(model, img_size=48, crop_pct=1.0,
                                                                            interpolation="bilinear")),
    ):  # fmt: skip
        for pipeline in ("cpu", "gpu"):
            cfg = resolve_model_defaults(TrainConfig(data=str(tmp_path), image_size=48, data_pipeline=pipeline,
                                                     **overrides), model)  # fmt: skip
            assert (cfg.mean, cfg.std, cfg.val_crop_pct) == (expected.mean, expected.std, expected.crop_pct)
            val = TrainInputs.build(cfg, DistContext()).val
            transform = eval_transform(expected)
            for i, (path, _) in enumerate(val.samples):
                image = val[i][0]
                if path.endswith("corrupt.jpg"):
                    assert image is None and val[i][4][0][0] == path  # skipped and reported
                else:
                    assert torch.equal(image, transform(load_image(path))), (overrides, pipeline, path)
    assert expected.interpolation == "bilinear" and data_config(model).interpolation == "bicubic"


def test_micro_batches_depend_only_on_chunks():
    """world 2 x accum 1 and world 1 x accum 2 see the same chunks in the same (chunk) order."""
    kwargs = dict(num_samples=103, global_batch=20, seed=3, epoch=2)
    single = list(MicroBatchSampler(world_size=1, rank=0, accum=2, **kwargs))
    rank0 = list(MicroBatchSampler(world_size=2, rank=0, accum=1, **kwargs))
    rank1 = list(MicroBatchSampler(world_size=2, rank=1, accum=1, **kwargs))
    assert len(single) == 10 and len(rank0) == 5
    assert single[0::2] == rank0 and single[1::2] == rank1
    flat = [i for chunk in single for _, i in chunk]
    assert len(flat) == len(set(flat)) == 100  # the last incomplete batch is dropped, no repeats
    resumed = list(MicroBatchSampler(world_size=1, rank=0, accum=2, start_step=3, **kwargs))
    assert resumed == single[6:]
    other_epoch = list(MicroBatchSampler(world_size=1, rank=0, accum=2, **{**kwargs, "epoch": 3}))
    assert other_epoch != single
    with pytest.raises(ValueError, match="not divisible"):
        MicroBatchSampler(world_size=3, rank=0, accum=1, **kwargs)
    shards = [list(ShardSampler(11, 4, 2, r)) for r in range(2)]
    assert sorted(i for s in shards for batch in s for _, i in batch) == list(range(11))


def test_batch_mix():
    images = torch.randn(8, 3, 32, 32)
    labels = torch.arange(8) % 4
    none = BatchMix(4, 0.0, 0.8, 1.0, 0.5)
    same, targets = none(images, labels)
    assert same is images and torch.equal(targets, torch.nn.functional.one_hot(labels, 4).float())
    torch.manual_seed(0)
    always = BatchMix(4, 1.0, 0.8, 1.0, 0.5)
    mixed, soft = always(images, labels)
    assert mixed.shape == images.shape and not torch.equal(mixed, images)
    assert torch.allclose(soft.sum(1), torch.ones(8)) and (soft.max(1).values < 1).any()


def test_crop_boxes():
    params = [0.5] * CROP_PARAMS
    for height, width in ((40, 48), (500, 100), (3, 2000)):
        for seed in range(20):
            p = torch.rand(CROP_PARAMS, generator=torch.Generator().manual_seed(seed)).tolist()
            top, left, h, w = random_resized_crop_box(p, height, width, (0.08, 1.0))
            assert 0 <= top and top + h <= height and 0 <= left and left + w <= width and h > 0 and w > 0
    # scale (1, 1) and ratio 1 of a square: the whole image
    assert random_resized_crop_box(params, 64, 64, (1.0, 1.0), (1.0, 1.0)) == (0, 0, 64, 64)


def test_gpu_pipeline_code_on_cpu(messy_folder, caplog):
    """The GPU path (bytes in workers, batched decode_jpeg, crops/flip/normalise on the device) run with
    device='cpu': shapes, determinism, fallbacks for CMYK / PNG / corrupt JPEGs, one log line per bad file."""
    cfg = aug_config(crop_scale_min=0.3, randaug_layers=1)
    dataset = EncodedImageDataset(messy_folder, seed=0)
    keys = [(0, i) for i in range(len(dataset))]
    batch = collate([dataset[k] for k in keys])
    samples, labels = batch[0], batch[1]
    bad_log = BadFileLog()
    bad_log(batch[4])  # the empty file fails in the worker already
    augment = GpuAugment(32, cfg, "cpu", bad_log=bad_log)
    with caplog.at_level(logging.WARNING, logger="mnv4"):
        torch.manual_seed(0)
        images, out_labels = augment(samples, labels)
        torch.manual_seed(0)
        again, _ = augment(samples, labels)
    assert images.shape == (len(dataset), 3, 32, 32) and torch.isfinite(images).all()
    assert images.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(images, again)
    lines = [r.getMessage() for r in caplog.records if r.name == "mnv4.engine"]
    assert sum("corrupt.jpg" in x for x in lines) == 1 and sum("truncated.jpg" in x for x in lines) <= 1
    assert bad_log.count >= 2  # the empty file and the corrupt JPEG were met (and counted)
    assert out_labels.shape == labels.shape
