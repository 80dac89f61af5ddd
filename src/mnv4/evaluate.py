"""The ImageNet evaluation loop as a library function: top-1 / top-5 and throughput on a labelled image folder.

Two layouts:
- ImageFolder: ``DIR/<class>/<image>``; classes are the sorted sub-folder names, so the ImageNet synset folders
  (``n01440764`` ...) get the standard class indices;
- ImageNet val layout: a flat ``DIR`` of images plus a label file, one ``filename label`` per line (whitespace or a
  comma between them, ``label`` the 0-based class index; blank lines and lines starting with ``#`` are skipped).

Always report the resolution and crop next to the accuracy (ecosystem §3.4): the result carries them.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .transforms import DataConfig, data_config, eval_transform, load_image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif", ".jfif")


class LabelFileDataset(Dataset):
    """A flat folder of images with a ``filename label`` file (the ImageNet val layout)."""

    def __init__(self, root: str | os.PathLike, label_file: str | os.PathLike, transform: Callable | None = None):
        self.root, self.transform = Path(root), transform
        self.samples = read_label_file(label_file)
        missing = [name for name, _ in self.samples if not (self.root / name).is_file()]
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} file(s) named in {label_file} are not in {self.root}: {', '.join(missing[:3])}"
            )

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        name, label = self.samples[i]
        img = load_image(self.root / name)
        return (self.transform(img) if self.transform else img), label


def read_label_file(path: str | os.PathLike) -> list[tuple[str, int]]:
    """``[(filename, class_index), ...]`` from a ``filename label`` text file; a malformed line raises one error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"label file {str(path)!r} does not exist")
    samples = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.replace(",", " ").split()
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit() or int(parts[1]) < 0:
            raise ValueError(
                f"{path}:{n}: expected 'filename label' with a 0-based class index, got {line[:80]!r}"
            )
        samples.append((parts[0], int(parts[1])))
    if not samples:
        raise ValueError(f"label file {path} lists no images")
    return samples


def is_image_file(path: str) -> bool:
    return path.lower().endswith(IMAGE_SUFFIXES)


def build_dataset(root: str | os.PathLike, transform: Callable, label_file: str | os.PathLike | None = None):
    """An ImageFolder of ``root``, or with ``label_file`` the flat ImageNet-val layout."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data folder {str(root)!r} does not exist")
    if label_file is not None:
        return LabelFileDataset(root, label_file, transform)
    if not any(p.is_dir() for p in root.iterdir()):
        raise ValueError(
            f"{root} has no class sub-folders. Use the ImageFolder layout ({root}/<class>/<image>) or, for the "
            f"ImageNet val layout (one flat folder), pass a label file with one 'filename label' line per image"
        )
    from torchvision.datasets import ImageFolder

    try:
        return ImageFolder(str(root), transform=transform, loader=load_image, is_valid_file=is_image_file)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{root}: {err}") from None


@dataclass(frozen=True)
class EvalConfig:
    """How to run the loop (not what to compute: that is the DataConfig)."""

    batch_size: int = 64
    workers: int = 4
    device: str = "cpu"
    amp: bool = False  # autocast: float16 on CUDA, bfloat16 on CPU
    channels_last: bool = False
    progress: bool = True

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")


@dataclass
class EvalResult:
    top1: float  # percent
    top5: float  # percent (top-k with k = min(5, num_classes))
    images: int
    seconds: float
    images_per_s: float  # whole loop: decoding + preprocessing + model
    img_size: int
    crop_pct: float
    interpolation: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    batch_size: int
    amp: bool
    channels_last: bool
    device: str

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        return (
            f"top-1 {self.top1:.3f}  top-5 {self.top5:.3f}  @ {self.img_size} px, crop_pct {self.crop_pct:g}, "
            f"{self.interpolation}  ({self.images} images, {self.images_per_s:.1f} images/s)"
        )


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    data: str | os.PathLike | Dataset,
    cfg: DataConfig | None = None,
    run: EvalConfig | None = None,
    label_file: str | os.PathLike | None = None,
) -> EvalResult:
    """Top-1 / top-5 of ``model`` on ``data`` (a folder, see the module doc, or a Dataset of (tensor, label)),
    preprocessed with ``cfg`` (default: the model's ``data_config``)."""
    run = run or EvalConfig()
    cfg = cfg or data_config(model)
    dataset = data if isinstance(data, Dataset) else build_dataset(data, eval_transform(cfg), label_file)
    num_classes = getattr(model, "num_classes", 0)
    if not num_classes:
        raise ValueError("the model has no classifier (num_classes=0 or features_only); evaluation needs one")
    classes = getattr(dataset, "classes", None)
    if classes is not None and len(classes) > num_classes:
        raise ValueError(f"{len(classes)} class folders but the model has {num_classes} outputs")
    if len(dataset) == 0:
        raise ValueError("the dataset is empty")
    device = torch.device(run.device)
    memory_format = torch.channels_last if run.channels_last else torch.contiguous_format
    model = model.eval().to(device, memory_format=memory_format)
    loader = DataLoader(
        dataset, batch_size=run.batch_size, shuffle=False, num_workers=run.workers,
        pin_memory=device.type == "cuda", persistent_workers=False,
    )
    k = min(5, num_classes)
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    correct1 = correct5 = seen = 0
    from tqdm import tqdm

    bar = tqdm(total=len(dataset), unit="img", disable=not run.progress, desc="eval")
    start = time.perf_counter()
    for images, target in loader:
        images = images.to(device, non_blocking=True).contiguous(memory_format=memory_format)
        target = target.to(device)
        if int(target.max()) >= num_classes:
            raise ValueError(f"label {int(target.max())} is out of range for a {num_classes}-class model")
        with torch.autocast(device.type, dtype=amp_dtype, enabled=run.amp):
            logits = model(images)
        hits = logits.float().topk(k, dim=-1).indices == target[:, None]
        correct1 += int(hits[:, 0].sum())
        correct5 += int(hits.any(dim=-1).sum())
        seen += len(target)
        bar.update(len(target))
        bar.set_postfix(top1=f"{100 * correct1 / seen:.2f}")
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    bar.close()
    return EvalResult(
        top1=100.0 * correct1 / seen,
        top5=100.0 * correct5 / seen,
        images=seen,
        seconds=seconds,
        images_per_s=seen / seconds if seconds > 0 else math.inf,
        img_size=cfg.img_size,
        crop_pct=cfg.crop_pct,
        interpolation=cfg.interpolation,
        mean=tuple(cfg.mean),
        std=tuple(cfg.std),
        batch_size=run.batch_size,
        amp=run.amp,
        channels_last=run.channels_last,
        device=str(device),
    )
