"""Input pipelines for training: an ImageFolder on the CPU, and a GPU path that decodes JPEGs with nvJPEG and
augments on the GPU. Validation images go through ``mnv4.transforms.eval_transform`` on the CPU in both cases (the
protocol of ``mnv4 eval``; see ``mnv4.train.inputs``).

Reproducibility is built in, because exact resume, DDP equivalence and offline distillation depend on it: every
random draw for a training sample comes from a generator seeded by ``(seed, aug_epoch, index)``, never from a worker's
global state. So a sample's crop is the same whatever the number of workers, the rank that loads it, or whether the
run was interrupted — and a teacher can label exactly the crops a student will see later.

Files that cannot be decoded are logged once per run and counted. In training the sample is replaced by the next
decodable one (same batch shape, same order on every run); in validation (``replace_bad=False``) it is skipped, so
accuracy is computed over the images that were scored.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..engine.metrics import BadFileLog  # noqa: F401 (re-exported: the pipelines return what it logs)
from ..engine.seeds import AUG_STREAM, SampleKey, mix_seed
from ..errors import UserError

# Files, decoding and folder layout are mnv4.images' (the one loader and scanner of every path); re-exported here.
from ..images import IMAGE_EXTENSIONS as IMG_EXTENSIONS  # noqa: F401
from ..images import DecodeError, scan_image_folder, to_rgb
from ..images import load_image as load_rgb
from ..transforms import randaugment_magnitude

log = logging.getLogger("mnv4.train.data")

JPEG_MAGIC = b"\xff\xd8"


# --------------------------------------------------------------------------------------------- transforms
def train_transform(size: int, cfg) -> object:
    """PIL image -> normalised float tensor: Inception crop, flip, RandAugment (each of ``randaug_layers`` ops applied
    with probability ``randaug_prob``, as TF's ``prob_to_apply``; torchvision's op set has no Cutout)."""
    from torchvision.transforms import v2

    ops: list = [v2.RandomResizedCrop(size, scale=(cfg.crop_scale_min, 1.0), antialias=True)]
    if cfg.hflip:
        ops.append(v2.RandomHorizontalFlip())
    if cfg.randaug_layers:
        ops.append(randaugment(cfg))
    ops += [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(cfg.mean), list(cfg.std))]
    return v2.Compose(ops)


# --------------------------------------------------------------------------------------------- datasets
class ImageFolderDataset(Dataset):
    """The CPU pipeline. Indexed by ``(aug_epoch, index)``; returns ``(image, label, index, aug_epoch, bad)``.

    ``image`` is the transformed tensor; ``index`` is the sample actually returned (differs from the asked one when
    that file could not be decoded); ``bad`` lists ``(path, reason)`` of the files skipped on the way, for the main
    process to log and count. With ``replace_bad=False`` (validation) an undecodable file is not replaced: ``image``
    is ``None`` and ``collate`` leaves the sample out.
    """

    def __init__(self, root: str | Path, transform, seed: int = 0, replace_bad: bool = True):
        self.samples, self.classes = scan_image_folder(root)
        self.root = str(root)
        self.transform = transform
        self.seed = seed
        self.replace_bad = replace_bad

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int):
        return load_rgb(self.samples[index][0])

    def __getitem__(self, key: SampleKey | int):
        aug_epoch, index = key if isinstance(key, tuple) else (-1, key)
        bad: list[tuple[str, str]] = []
        for attempt in range(len(self.samples)):
            i = (index + attempt) % len(self.samples)
            try:
                image = self.load(i)
            except DecodeError as err:
                bad.append((self.samples[i][0], str(err)))
                if not self.replace_bad:
                    return None, self.samples[i][1], i, aug_epoch, tuple(bad)
                continue
            return self.apply_transform(image, aug_epoch, i), self.samples[i][1], i, aug_epoch, tuple(bad)
        raise UserError(f"no file under {self.root!r} could be decoded as an image")

    def apply_transform(self, image, aug_epoch: int, index: int):
        if aug_epoch < 0:
            return self.transform(image)
        # torchvision's transforms draw from torch's global CPU generator: fork it and seed it for this sample. Only
        # that generator: torch.manual_seed also queues a seed for each lazily initialised device backend, recording
        # a stack trace every time, which was half the CPU cost of a small image's transform.
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(mix_seed(self.seed, AUG_STREAM, aug_epoch, index))
            return self.transform(image)


def collate(batch):
    """Stack images and labels; keep indices, augmentation epochs and the skipped files. Samples without an image
    (undecodable validation files) are left out; a batch of only those has ``images`` ``None`` and no labels."""
    skipped = [p for sample in batch for p in sample[4]]
    batch = [sample for sample in batch if sample[0] is not None]
    if not batch:
        empty = torch.zeros(0, dtype=torch.long)
        return None, empty, empty, empty, skipped
    images, labels, indices, aug_epochs, _ = zip(*batch, strict=True)
    return (
        torch.stack(images) if isinstance(images[0], torch.Tensor) else list(images),
        torch.tensor(labels, dtype=torch.long),
        torch.tensor(indices, dtype=torch.long),
        torch.tensor(aug_epochs, dtype=torch.long),
        skipped,
    )


# --------------------------------------------------------------------------------------------- mixing
class BatchMix:
    """Mixup or CutMix on a batch (torchvision's ``v2.MixUp`` / ``v2.CutMix``) with probability ``prob``; CutMix
    is chosen with ``switch_prob``. Always returns one-hot / mixed soft targets so the loss sees one format."""

    def __init__(self, num_classes: int, prob: float, mixup_alpha: float, cutmix_alpha: float, switch_prob: float):
        from torchvision.transforms import v2

        self.num_classes, self.prob, self.switch_prob = num_classes, prob, switch_prob
        self.mixup = v2.MixUp(alpha=mixup_alpha, num_classes=num_classes) if mixup_alpha > 0 else None
        self.cutmix = v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes) if cutmix_alpha > 0 else None

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        chosen = None
        if self.prob > 0 and (self.mixup or self.cutmix) and float(torch.rand(())) < self.prob:
            use_cutmix = self.cutmix is not None and (self.mixup is None or float(torch.rand(())) < self.switch_prob)
            chosen = self.cutmix if use_cutmix else self.mixup
        if chosen is None:
            return images, F.one_hot(labels, self.num_classes).to(images.dtype)
        return chosen(images, labels)


# --------------------------------------------------------------------------------------------- GPU pipeline
CROP_ATTEMPTS = 10
CROP_PARAMS = 2 * CROP_ATTEMPTS + 3  # (area, log-ratio) per attempt, then x, y, flip


class EncodedImageDataset(ImageFolderDataset):
    """The GPU pipeline's worker side: returns the file's bytes (JPEG) — or, for other formats, the image decoded on
    the CPU — plus this sample's crop parameters (uniform draws from its own seeded generator). The decode and all
    pixel work happen batched on the GPU in ``GpuAugment``."""

    def __init__(self, root: str | Path, seed: int = 0):
        super().__init__(root, transform=None, seed=seed)

    def __getitem__(self, key: SampleKey | int):
        aug_epoch, index = key if isinstance(key, tuple) else (-1, key)
        bad: list[str] = []
        for attempt in range(len(self.samples)):
            i = (index + attempt) % len(self.samples)
            path = self.samples[i][0]
            try:
                payload = read_encoded(path)
            except DecodeError as err:
                bad.append((path, str(err)))
                continue
            generator = torch.Generator().manual_seed(mix_seed(self.seed, AUG_STREAM, aug_epoch, i))
            params = torch.rand(CROP_PARAMS, generator=generator, dtype=torch.float64)
            return EncodedSample(payload, params, path), self.samples[i][1], i, aug_epoch, tuple(bad)
        raise UserError(f"no file under {self.root!r} could be read as an image")


@dataclass
class EncodedSample:
    payload: torch.Tensor  # 1-D uint8 JPEG bytes, or a decoded uint8 CHW image (non-JPEG files)
    params: torch.Tensor  # CROP_PARAMS uniforms
    path: str

    @property
    def is_jpeg(self) -> bool:
        return self.payload.dim() == 1


def read_encoded(path: str) -> torch.Tensor:
    data = Path(path).read_bytes()
    if data[:2] == JPEG_MAGIC:
        return torch.frombuffer(bytearray(data), dtype=torch.uint8)
    image = load_rgb(path)  # PNG & co.: decoded here on the CPU (nvJPEG only reads JPEG)
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).contiguous()


def random_resized_crop_box(
    params: Sequence[float], height: int, width: int, scale: tuple[float, float], ratio=(3 / 4, 4 / 3)
) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop box (10 tries, then a centre crop clamped to ``ratio``) from stored uniforms,
    so a crop is a pure function of the sample's parameters: ``(top, left, h, w)``."""
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    u_x, u_y = params[2 * CROP_ATTEMPTS], params[2 * CROP_ATTEMPTS + 1]
    for t in range(CROP_ATTEMPTS):
        target = area * (scale[0] + (scale[1] - scale[0]) * float(params[2 * t]))
        aspect = math.exp(log_lo + (log_hi - log_lo) * float(params[2 * t + 1]))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = min(int(float(u_y) * (height - h + 1)), height - h)
            left = min(int(float(u_x) * (width - w + 1)), width - w)
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


class GpuAugment:
    """Training batches: batched decode (``torchvision.io.decode_jpeg(list, device=...)``, nvJPEG on CUDA) +
    random-resized crop/flip/[RandAugment]/normalise on ``device``. Works on the CPU too (that is how the tests
    exercise it). Validation does not come through here: it uses the evaluation transform on the CPU, so both
    pipelines score the same tensors.

    A JPEG the batched decoder rejects (e.g. CMYK for nvJPEG, or corrupt) is retried alone, then on the CPU with
    PIL; a file nothing can decode is replaced by the batch's first good image (and its label), logged once and
    counted in ``bad_log``.
    """

    def __init__(self, size: int, cfg, device: torch.device | str, bad_log: BadFileLog | None = None):
        self.size, self.device = size, torch.device(device)
        self.scale = (cfg.crop_scale_min, 1.0)
        self.hflip = cfg.hflip
        self.mean = torch.tensor(cfg.mean, device=self.device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(cfg.std, device=self.device).view(1, 3, 1, 1) * 255
        self.randaug = randaugment(cfg) if cfg.randaug_layers else None
        self.bad_log = bad_log or BadFileLog()

    def decode(self, samples: Sequence[EncodedSample]) -> list[torch.Tensor | None]:
        from torchvision.io import ImageReadMode, decode_jpeg

        images: list[torch.Tensor | None] = [None] * len(samples)
        jpeg_idx = [i for i, s in enumerate(samples) if s.is_jpeg]
        for i, s in enumerate(samples):
            if not s.is_jpeg:
                images[i] = s.payload.to(self.device, non_blocking=True)
        if jpeg_idx:
            try:
                decoded = decode_jpeg(
                    [samples[i].payload for i in jpeg_idx], mode=ImageReadMode.RGB, device=self.device
                )
                for i, image in zip(jpeg_idx, decoded, strict=True):
                    images[i] = image
            except RuntimeError:
                for i in jpeg_idx:
                    images[i] = self._decode_one(samples[i])
        return images

    def _decode_one(self, sample: EncodedSample) -> torch.Tensor | None:
        from torchvision.io import ImageReadMode, decode_jpeg

        try:
            return decode_jpeg(sample.payload, mode=ImageReadMode.RGB, device=self.device)
        except RuntimeError:
            pass
        import io

        from PIL import Image

        try:
            with Image.open(io.BytesIO(sample.payload.numpy().tobytes())) as image:
                image.load()
                rgb = to_rgb(image)
        except (OSError, ValueError, SyntaxError, EOFError) as err:
            self.bad_log([(sample.path, f"undecodable JPEG: {type(err).__name__}: {err}")])
            return None
        return torch.from_numpy(np.asarray(rgb).copy()).permute(2, 0, 1).to(self.device)

    @torch.no_grad()
    def __call__(self, samples: Sequence[EncodedSample], labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        images = self.decode(samples)
        good = [i for i, im in enumerate(images) if im is not None]
        if not good:
            raise UserError("no image of this batch could be decoded: " + ", ".join(s.path for s in samples))
        labels = labels.clone()
        for i, im in enumerate(images):
            if im is None:  # keep the batch shape: reuse the first good image
                images[i], labels[i] = images[good[0]], labels[good[0]]
        out = []
        for image, sample in zip(images, samples, strict=True):
            _, height, width = image.shape
            top, left, h, w = random_resized_crop_box(sample.params.tolist(), height, width, self.scale)
            crop = image[None, :, top : top + h, left : left + w].float()
            out.append(
                F.interpolate(crop, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False)
            )
        batch = torch.cat(out).clamp_(0, 255)
        if self.hflip:
            flip = torch.tensor([float(s.params[-1]) < 0.5 for s in samples], device=self.device)
            batch = torch.where(flip.view(-1, 1, 1, 1), batch.flip(-1), batch)
        if self.randaug is not None:
            as_uint8 = batch.round().to(torch.uint8)
            batch = torch.stack([self.randaug(img) for img in as_uint8]).float()
        batch = (batch - self.mean) / self.std
        return batch.contiguous(memory_format=torch.channels_last), labels


def randaugment(cfg):
    """RandAugment as TF's: ``randaug_layers`` single ops, each applied with probability ``randaug_prob``."""
    from torchvision.transforms import v2

    magnitude = randaugment_magnitude(cfg.randaug_magnitude)
    ops = []
    for _ in range(cfg.randaug_layers):
        one_op = v2.RandAugment(num_ops=1, magnitude=magnitude, num_magnitude_bins=11)
        ops.append(v2.RandomApply([one_op], p=cfg.randaug_prob) if cfg.randaug_prob < 1 else one_op)
    return v2.Compose(ops)
