"""The DALI training pipeline, run on DALI's CPU operators: the sampler's order, the 'gpu' pipeline's crops,
torchvision's RandAugment ops, determinism and exact resume, and the CPU pipeline's policy for undecodable files.

The worker side (headers, parameters) is pure Python and is tested with or without DALI; the rest needs the
``nvidia-dali-cuda120`` wheel (``make test-dali``) and skips, saying so, where it is not installed.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mnv4.engine.seeds import MicroBatchSampler
from mnv4.errors import UserError
from mnv4.train.config import TrainConfig
from mnv4.train.dali import RANDAUG, RANDAUG_OPS, DaliSourceDataset, read_header, require_dali
from mnv4.train.data import (
    BadFileLog,
    DecodeError,
    EncodedImageDataset,
    GpuAugment,
    ImageFolderDataset,
    collate,
    load_rgb,
    random_resized_crop_box,
    train_transform,
)

SIZE = 32
BAD = {"truncated.jpg": "truncated JPEG", "notimage.jpg": "cannot identify", "badquant.jpg": "DALI (cpu)"}


@pytest.fixture(scope="module")
def dali():
    return pytest.importorskip(
        "nvidia.dali", reason="NVIDIA DALI is not installed (pip install 'mnv4[dali]', or `make test-dali`)"
    )


def _smooth(rng, height: int, width: int) -> Image.Image:
    """Upsampled 5x5 noise: smooth, so two resize implementations agree to a grey level."""
    return Image.fromarray((rng.random((5, 5, 3)) * 255).astype(np.uint8)).resize((width, height), Image.BICUBIC)


def _undefined_quant_table(jpeg: bytes) -> bytes:
    """A JPEG whose header is complete but whose first component names quantisation table 3, which it does not
    define: it passes the header checks, and libjpeg-turbo (PIL and DALI alike) refuses to decode it."""
    data, pos = bytearray(jpeg), 2
    while data[pos + 1] not in (0xC0, 0xC1, 0xC2):
        pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
    data[pos + 4 + 6 + 2] = 3  # SOF: length(2) precision(1) height(2) width(2) count(1), then id, sampling, Tq
    return bytes(data)


@pytest.fixture(scope="module")
def clean_folder(tmp_path_factory):
    """12 decodable images of every kind the pipeline routes differently: JPEGs of several shapes (DALI decodes
    them), 8-bit RGB and grey PNG (DALI), RGBA PNG, 16-bit PNG and CMYK JPEG (PIL first, as the CPU pipeline)."""
    root = tmp_path_factory.mktemp("clean")
    rng = np.random.default_rng(1)
    (root / "a").mkdir()
    (root / "b").mkdir()
    for i, (h, w) in enumerate([(40, 56), (56, 40), (48, 48), (36, 64), (64, 36), (44, 50)]):
        _smooth(rng, h, w).save(root / "a" / f"{i}.jpg", quality=92)
    _smooth(rng, 44, 60).save(root / "b" / "rgb.png")
    _smooth(rng, 50, 42).convert("L").save(root / "b" / "grey.png")
    rgba = _smooth(rng, 40, 52).convert("RGBA")
    rgba.putalpha(100)
    rgba.save(root / "b" / "rgba.png")
    _smooth(rng, 46, 58).convert("CMYK").save(root / "b" / "cmyk.jpg")
    grey16 = np.asarray(_smooth(rng, 38, 50).convert("L")).astype(np.uint16) * 200
    Image.fromarray(grey16).save(root / "b" / "sixteen.png")
    _smooth(rng, 52, 40).save(root / "b" / "x.jpg", quality=92)
    return root


@pytest.fixture(scope="module")
def messy_folder(tmp_path_factory):
    """13 good JPEGs/PNGs and the three kinds of bad file: truncated, not an image, and one only the decoder
    rejects."""
    root = tmp_path_factory.mktemp("messy")
    rng = np.random.default_rng(2)
    for label in ("a", "b"):
        (root / label).mkdir()
    for i in range(12):
        _smooth(rng, 40 + 2 * i, 56 - i).save(root / ("a" if i < 6 else "b") / f"{i:02d}.jpg", quality=90)
    _smooth(rng, 44, 44).save(root / "b" / "zz.png")
    good = (root / "a" / "00.jpg").read_bytes()
    (root / "a" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (root / "b" / "notimage.jpg").write_bytes(b"these bytes are not an image\n" * 20)
    (root / "a" / "badquant.jpg").write_bytes(_undefined_quant_table(good))
    return root


def resolved_config(**values) -> TrainConfig:
    """A TrainConfig as a run resolves it (Conv-S's mean/std and protocol filled in)."""
    from mnv4.train.inputs import resolve_model_defaults

    return resolve_model_defaults(TrainConfig(image_size=SIZE, **values), "mobilenetv4_conv_small")


def _loader(root, cfg, **kwargs):
    from mnv4.train.dali import DaliTrainLoader

    options = dict(batch_size=4, workers=0, threads=1) | kwargs
    return DaliTrainLoader(root, SIZE, cfg, "cpu", **options)


# --------------------------------------------------------------------------------------------- without DALI
def test_require_dali_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "nvidia.dali", None)  # an import of it now fails as if it were absent
    with pytest.raises(UserError, match=r"pip install 'mnv4\[dali\]'"):
        require_dali()


def test_headers_size_images_and_reject_what_dali_would_misread(clean_folder, messy_folder):
    jpeg = read_header((clean_folder / "a" / "1.jpg").read_bytes())
    assert (jpeg.height, jpeg.width, jpeg.native) == (56, 40, True)
    png = read_header((clean_folder / "b" / "rgb.png").read_bytes())
    assert (png.height, png.width, png.native) == (44, 60, True)
    assert read_header((clean_folder / "b" / "grey.png").read_bytes()).native
    # through PIL first (the CPU pipeline's to_rgb): alpha, 16 bits, CMYK
    for name in ("rgba.png", "sixteen.png", "cmyk.jpg"):
        assert not read_header((clean_folder / "b" / name).read_bytes()).native, name
    with pytest.raises(DecodeError, match="truncated JPEG"):
        read_header((messy_folder / "a" / "truncated.jpg").read_bytes())
    png_bytes = (clean_folder / "b" / "rgb.png").read_bytes()
    with pytest.raises(DecodeError, match="truncated PNG"):
        read_header(png_bytes[: len(png_bytes) // 2])
    with pytest.raises(DecodeError, match="empty"):
        read_header(b"")
    assert read_header((messy_folder / "b" / "notimage.jpg").read_bytes()) is None  # left to PIL, which rejects it
    # complete header, undecodable data: only the decoder can tell
    assert read_header((messy_folder / "a" / "badquant.jpg").read_bytes()).native


def test_worker_samples_follow_the_cpu_pipeline(clean_folder, messy_folder):
    """Same replacement of bad files as ImageFolderDataset; PIL-decoded files arrive as PPM with the CPU
    pipeline's pixels; crop and flip are EncodedImageDataset's draws for the same sample."""
    cpu = ImageFolderDataset(messy_folder, transform=lambda image: image.size)
    worker = DaliSourceDataset(messy_folder, seed=0)
    worker.known_bad[str(messy_folder / "a" / "badquant.jpg")] = "DALI could not decode it"  # as the loader learns
    for i in range(len(cpu)):
        assert worker[(0, i)][3] == cpu[(0, i)][2]
    bad_index = [p for p, _ in worker.samples].index(str(messy_folder / "a" / "truncated.jpg"))
    skipped = worker[(0, bad_index)][5]
    assert [Path(p).name for p, _ in skipped] == ["truncated.jpg"] and "truncated JPEG" in skipped[0][1]

    worker = DaliSourceDataset(clean_folder, crop_scale_min=0.3, seed=4)
    rgba = [p for p, _ in worker.samples].index(str(clean_folder / "b" / "rgba.png"))
    encoded, params, *_ = worker[(3, rgba)]
    ppm = np.asarray(Image.open(io.BytesIO(encoded.tobytes())))
    assert np.array_equal(ppm, np.asarray(load_rgb(clean_folder / "b" / "rgba.png")))  # alpha on white
    uniforms = EncodedImageDataset(clean_folder, seed=4)[(3, rgba)][0].params.tolist()
    assert params[:4].tolist() == list(random_resized_crop_box(uniforms, 40, 52, (0.3, 1.0)))
    assert params[4] == int(uniforms[-1] < 0.5)


def test_randaugment_draws_apply_with_the_recipe_probability():
    """Each layer is the identity with probability 1 - p + p/14, otherwise one of the 14 ops, with a fair sign."""
    worker = DaliSourceDataset.__new__(DaliSourceDataset)
    worker.seed, worker.scale, worker.hflip, worker.randaug_layers, worker.randaug_prob = 7, (0.08, 1.0), True, 2, 0.7
    rows = np.stack([worker.augment_params(0, i, 100, 120) for i in range(3000)])
    ops, signs = rows[:, RANDAUG::2], rows[:, RANDAUG + 1 :: 2]
    assert ops.shape == (3000, 2) and ops.min() == 0 and ops.max() == len(RANDAUG_OPS) - 1
    expected_identity = 0.3 + 0.7 / len(RANDAUG_OPS)
    assert abs((ops == 0).mean() - expected_identity) < 0.03
    others = np.bincount(ops[ops > 0], minlength=len(RANDAUG_OPS))[1:] / ops.size
    assert np.all(np.abs(others - 0.7 / len(RANDAUG_OPS)) < 0.02)
    assert abs(signs.mean() - 0.5) < 0.03 and abs(rows[:, 4].mean() - 0.5) < 0.04
    assert not np.array_equal(rows[:, RANDAUG], rows[:, RANDAUG + 2])  # the two layers draw independently


# --------------------------------------------------------------------------------------------- with DALI (CPU)
def test_crops_match_the_gpu_pipeline_in_channels_last(dali, clean_folder):
    """For the same samples DALI's output equals GpuAugment's (same boxes and flips, bilinear antialiased resize)
    to a grey level, for JPEG, PNG and the PIL-decoded kinds; channels_last memory when asked."""
    cfg = resolved_config(seed=5, crop_scale_min=0.25)
    loader = _loader(clean_folder, cfg, channels_last=True)
    reference = GpuAugment(SIZE, cfg, "cpu")
    encoded = EncodedImageDataset(clean_folder, seed=5)
    one_level = 1 / (255 * min(cfg.std))
    seen = set()
    for epoch in range(2):
        sampler = MicroBatchSampler(len(loader), 4, 1, 0, 1, seed=5, epoch=epoch)
        for (images, labels, indices, _, bad), keys in zip(loader.epoch(sampler), sampler, strict=True):
            assert images.shape == (4, 3, SIZE, SIZE) and images.dtype == torch.float32 and bad == []
            assert images.is_contiguous(memory_format=torch.channels_last)
            expected, expected_labels = reference(*collate([encoded[k] for k in keys])[:2])
            assert torch.equal(labels, expected_labels) and indices.tolist() == [i for _, i in keys]
            assert (images - expected).abs().max() <= 1.5 * one_level
            seen.update(indices.tolist())
    assert len(seen) == len(loader) == 12


def test_same_samples_as_the_cpu_pipeline_and_bad_files_skipped(dali, messy_folder, caplog, monkeypatch):
    """Ranks 0 and 1 of 2 with 2 accumulation steps: every micro-batch holds the CPU pipeline's sample indices,
    including where bad files were replaced by the next decodable one; each bad file is logged once and counted, and
    a file found undecodable by DALI is not decoded again in the next epoch."""
    from mnv4.train import dali as dali_module

    cfg = resolved_config(seed=3)
    loader = _loader(messy_folder, cfg, batch_size=2)
    cpu_dataset = ImageFolderDataset(messy_folder, train_transform(SIZE, cfg), seed=3)
    probes = []
    real_failures = dali_module.DecodeProbe.failures
    monkeypatch.setattr(
        dali_module.DecodeProbe, "failures", lambda self, batches: probes.append(1) or real_failures(self, batches)
    )
    bad_log = BadFileLog()
    for epoch in range(2):
        for rank in (0, 1):  # one loader serves any sampler: a process's shard is only its sampler
            sampler = MicroBatchSampler(len(loader), 8, 2, rank, 2, seed=3, epoch=epoch)
            cpu = torch.utils.data.DataLoader(cpu_dataset, batch_sampler=sampler, collate_fn=collate)
            batches = list(loader.epoch(sampler))
            assert len(batches) == len(sampler) == 4
            for (images, labels, indices, aug_epochs, bad), expected in zip(batches, cpu, strict=True):
                assert indices.tolist() == expected[2].tolist() and labels.tolist() == expected[1].tolist()
                assert aug_epochs.tolist() == [epoch, epoch] and images.shape == (2, 3, SIZE, SIZE)
                assert sorted(Path(p).name for p, _ in bad) == sorted(Path(p).name for p, _ in expected[4])
                bad_log(bad)
        if epoch == 0:
            assert probes == [1]  # badquant.jpg passed the header checks and made DALI fail once
    assert probes == [1]  # known from then on: skipped by the workers
    assert {Path(p).name: reason for p, reason in loader.skipped.files.items()}.keys() == BAD.keys()
    for path, reason in loader.skipped.files.items():
        assert BAD[Path(path).name] in reason
    assert loader.skipped.samples >= len(BAD)
    logged = [r.getMessage() for r in caplog.records if "skipped undecodable image" in r.getMessage()]
    assert len(logged) == len(BAD)


@pytest.mark.slow
def test_deterministic_and_resumes_exactly_with_randaugment(dali, messy_folder):
    """Two passes give identical batches; a new loader started at step 1 (2 micro-batches per step) gives the
    uninterrupted run's batches from there, bit for bit — though the first pass rebuilt its pipeline after DALI
    failed on badquant.jpg, and the resumed one met that failure elsewhere; another epoch augments differently."""
    cfg = resolved_config(seed=11, randaug_layers=2, randaug_magnitude=15, randaug_prob=0.7)
    first = _loader(messy_folder, cfg, batch_size=2)

    def run(loader, epoch, start_step=0):
        sampler = MicroBatchSampler(len(loader), 4, 1, 0, 2, seed=11, epoch=epoch, start_step=start_step)
        return [(images, indices) for images, _, indices, _, _ in loader.epoch(sampler)]

    uninterrupted = run(first, 0)
    again = run(first, 0)
    resumed = run(_loader(messy_folder, cfg, batch_size=2), 0, start_step=1)
    assert len(uninterrupted) == 8 and len(resumed) == 6
    for (a, ia), (b, ib) in zip(uninterrupted, again, strict=True):
        assert torch.equal(ia, ib) and torch.equal(a, b)
    for (a, ia), (b, ib) in zip(uninterrupted[2:], resumed, strict=True):
        assert torch.equal(ia, ib) and torch.equal(a, b)
    other_epoch = run(first, 1)
    assert not any(torch.equal(a, b) for (a, _), (b, _) in zip(uninterrupted, other_epoch, strict=True))


def test_randaugment_ops_match_torchvision(dali):
    """Each op at magnitude 9, both signs, on the same uint8 image: DALI's result equals torchvision's to a grey
    level (rounding) for every op but equalize, whose lookup table follows OpenCV instead of PIL (documented)."""
    from nvidia.dali import fn, pipeline_def, types
    from torchvision.transforms import v2

    from mnv4.train.dali import apply_randaugment

    size, magnitude = 40, 9
    image = np.asarray(_smooth(np.random.default_rng(3), size, size))
    cases = [(op, sign) for op in range(len(RANDAUG_OPS)) for sign in (0, 1)]

    @pipeline_def(enable_conditionals=True, batch_size=len(cases), num_threads=1, device_id=None)
    def one_layer():
        images = fn.external_source(name="images", dtype=types.UINT8, ndim=3, layout="HWC")
        params = fn.external_source(name="params", dtype=types.INT32, ndim=1)
        return apply_randaugment(images, params, 1, magnitude, size)

    pipe = one_layer(prefetch_queue_depth=1)
    pipe.build()
    pipe.feed_input("images", [image] * len(cases), layout="HWC")
    pipe.feed_input("params", [np.array([0, 0, 0, 0, 0, op, sign], np.int32) for op, sign in cases])
    (outputs,) = pipe.run()

    torchvision = v2.RandAugment(num_ops=1, magnitude=magnitude, num_magnitude_bins=11)
    names = {name.lower(): name for name in torchvision._AUGMENTATION_SPACE}
    source = torch.from_numpy(image.copy()).permute(2, 0, 1)
    for (op, sign), output in zip(cases, outputs, strict=True):
        name = names[RANDAUG_OPS[op].replace("_", "")]
        magnitudes, signed = torchvision._AUGMENTATION_SPACE[name]
        levels = magnitudes(11, size, size)
        value = float(levels[magnitude]) if levels is not None else 0.0
        value = -value if signed and sign else value
        expected = torchvision._apply_image_or_video_transform(
            source, name, value, interpolation=v2.InterpolationMode.NEAREST, fill=torchvision._fill
        )
        diff = (torch.from_numpy(np.array(output)).permute(2, 0, 1).int() - expected.int()).abs()
        if name == "Equalize":
            assert 0 < diff.float().mean() < 20  # a histogram equalisation, by another formula
        else:
            # rounding: DALI rounds to nearest, torchvision truncates (color at factor 0.19: 1 level on average)
            assert diff.max() <= 2 and diff.float().mean() < 1.5, (name, sign, diff.max().item())


# --------------------------------------------------------------------------------------------- in mnv4 train
def test_training_on_dali_resumes_bit_identically(tmp_path):
    """`data_pipeline='dali'` in a real run (DALI's CPU operators): killed in step 5 of a 5-step epoch and resumed
    from the step-3 checkpoint, the final weights equal an uninterrupted run's to the bit -- the sampler, the seeds
    and the checkpoints' data order are mnv4's whichever pipeline decodes."""
    pytest.importorskip("nvidia.dali", reason="needs the dali extra (make dali)")
    import shutil

    from digits import Killed, model_killed_in_forward, small_config

    from mnv4.train import train

    data = tmp_path / "data"
    for split, per_class in (("train", 5), ("val", 1)):
        for label in range(2):
            folder = data / split / str(label)
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = np.random.default_rng(10 * label + i).integers(0, 256, (40, 40, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.jpg", quality=90)
    kw = dict(epochs=1, save_every_steps=3, global_batch=2, data_pipeline="dali", dali_threads=1)
    full = train(small_config(data, tmp_path / "full", **kw))
    from mnv4.train import list_checkpoints, load_checkpoint

    assert load_checkpoint(list_checkpoints(tmp_path / "full")[-1])["config"]["data_pipeline"] == "dali"

    cfg = small_config(data, tmp_path / "killed", **kw)
    with pytest.raises(Killed):
        train(cfg, model=model_killed_in_forward(cfg, num_classes=2, forward=5))
    resumed = train(small_config(data, tmp_path / "killed", resume="auto", **kw))
    assert resumed.global_step == full.global_step == 5
    from safetensors.torch import load_file

    a, b = load_file(str(full.weights)), load_file(str(resumed.weights))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    shutil.rmtree(data)
