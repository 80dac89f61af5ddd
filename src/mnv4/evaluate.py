"""The ImageNet evaluation loop as a library function: top-1 / top-5 and throughput on a labelled image folder.

The folder layouts, and which model output a class folder is, are ``mnv4.images``': an ImageFolder (ImageNet synset
folders get their ImageNet indices, also for a subset of the 1000) or the ImageNet val layout (a flat folder plus a
label file). The preprocessing is ``eval_transform(data_config(model))``, the tag's protocol.

Nothing is silently wrong:
- an image that cannot be decoded is skipped, logged (one line: file and reason) and counted, and the accuracy is
  over the images scored (``EvalConfig.strict`` stops at the first one instead). In worker processes it is caught
  as well, so no worker dies with a traceback;
- an image whose logits are not finite (NaN/inf: broken weights, or float16 overflow under ``amp``) counts as wrong
  and is counted in ``EvalResult.nonfinite``: a model that outputs NaN cannot get a plausible-looking top-1.

Always report the resolution and crop next to the accuracy (the same weights score 0.4-1.1 points apart at a tag's
train and test size, docs/weights.md): the result carries them.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .errors import UserError
from .images import DecodeError, ImageSet, load_image, read_label_file, scan_images  # noqa: F401 (re-exported)
from .transforms import DataConfig, data_config, eval_transform

log = logging.getLogger("mnv4.evaluate")


class LabelledImages(Dataset):
    """Images with their targets through ``transform``. Item ``i`` is ``(tensor, target, None)``, or
    ``(None, target, DecodeError)`` for a file that cannot be decoded: the error travels back from a worker process
    as data, for the main process to report."""

    def __init__(self, paths: Sequence[os.PathLike | str], targets: Sequence[int], transform: Callable):
        self.paths, self.targets, self.transform = list(paths), list(targets), transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            return self.transform(load_image(self.paths[i])), self.targets[i], None
        except DecodeError as err:
            return None, self.targets[i], err


def collate_labelled(batch) -> tuple[torch.Tensor | None, torch.Tensor, list[DecodeError]]:
    """Stack the decoded images and their targets; set aside the errors of the others."""
    good = [(x, t) for x, t, err in batch if err is None]
    images = torch.stack([x for x, _ in good]) if good else None
    return images, torch.tensor([t for _, t in good], dtype=torch.long), [err for _, _, err in batch if err]


@dataclass(frozen=True)
class EvalConfig:
    """How to run the loop (not what to compute: that is the DataConfig)."""

    batch_size: int = 64
    workers: int = 4
    device: str = "cpu"
    amp: bool = False  # autocast: float16 on CUDA, bfloat16 on CPU
    channels_last: bool = False
    progress: bool = True
    strict: bool = False  # stop at the first image that cannot be decoded instead of skipping it

    def __post_init__(self):
        if self.batch_size < 1:
            raise UserError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.workers < 0:
            raise UserError(f"workers must be >= 0, got {self.workers}")


@dataclass
class EvalResult:
    top1: float  # percent of the images scored
    top5: float  # percent (top-k with k = min(5, num_classes))
    images: int  # scored: decoded and run through the model
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
    nonfinite: int = 0  # scored images whose logits were NaN/inf (counted as wrong)
    skipped: list[str] = field(default_factory=list)  # "path: reason" of each image that could not be decoded

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        notes = [f"{self.images} images", f"{self.images_per_s:.1f} images/s"]
        if self.skipped:
            notes.append(f"{len(self.skipped)} unreadable skipped")
        if self.nonfinite:
            notes.append(f"{self.nonfinite} with non-finite logits counted as wrong")
        return (
            f"top-1 {self.top1:.3f}  top-5 {self.top5:.3f}  @ {self.img_size} px, crop_pct {self.crop_pct:g}, "
            f"{self.interpolation}  ({', '.join(notes)})"
        )


def labelled_dataset(
    model: nn.Module, data: str | os.PathLike | ImageSet, transform: Callable,
    label_file: str | os.PathLike | None = None, class_names: Sequence[str] | None = None,
) -> LabelledImages:
    """``data`` (a folder, or an ``ImageSet`` already scanned) with targets for ``model``'s outputs."""
    images = data if isinstance(data, ImageSet) else scan_images(data, label_file)
    for note in images.ignored:
        log.warning("ignored %s", note)
    return LabelledImages(images.paths, images.targets(model.num_classes, class_names), transform)


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    data: str | os.PathLike | ImageSet | Dataset,
    cfg: DataConfig | None = None,
    run: EvalConfig | None = None,
    label_file: str | os.PathLike | None = None,
    class_names: Sequence[str] | None = None,
) -> EvalResult:
    """Top-1 / top-5 of ``model`` on ``data``, preprocessed with ``cfg`` (default: the model's ``data_config``).

    ``data``: a folder (see the module doc; ``label_file`` for the ImageNet val layout), an ``ImageSet``, or any
    Dataset of ``(tensor, label)``. ``class_names``: the model's classes in output order, to match class folders by
    name (``mnv4.images.class_indices``)."""
    run = run or EvalConfig()
    cfg = cfg or data_config(model)
    num_classes = getattr(model, "num_classes", 0)
    if not num_classes:
        raise UserError("the model has no classifier (num_classes=0 or features_only); evaluation needs one")
    if isinstance(data, Dataset):
        dataset, collate = data, None
    else:
        dataset, collate = labelled_dataset(model, data, eval_transform(cfg), label_file, class_names), collate_labelled
    if len(dataset) == 0:
        raise UserError("the dataset is empty")
    device = torch.device(run.device)
    memory_format = torch.channels_last if run.channels_last else torch.contiguous_format
    model = model.eval().to(device, memory_format=memory_format)
    loader = DataLoader(
        dataset, batch_size=run.batch_size, shuffle=False, num_workers=run.workers, collate_fn=collate,
        pin_memory=device.type == "cuda", persistent_workers=False,
    )
    k = min(5, num_classes)
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    correct1 = correct5 = seen = nonfinite = 0
    skipped: list[str] = []
    from tqdm import tqdm

    bar = tqdm(total=len(dataset), unit="img", disable=not run.progress, desc="eval")
    start = time.perf_counter()
    for batch in loader:
        images, target, failed = batch if collate else (*batch, [])
        for err in failed:
            if run.strict:
                raise err
            log.warning("skipped %s", err)
            skipped.append(str(err))
        bar.update(len(failed))
        if images is None:
            continue
        images = images.to(device, non_blocking=True).contiguous(memory_format=memory_format)
        target = target.to(device)
        if int(target.max()) >= num_classes:  # a Dataset of the caller's (folders are checked before the loop)
            raise UserError(f"label {int(target.max())} is out of range for a {num_classes}-class model")
        with torch.autocast(device.type, dtype=amp_dtype, enabled=run.amp):
            logits = model(images).float()
        finite = torch.isfinite(logits).all(dim=-1)
        hits = (logits.topk(k, dim=-1).indices == target[:, None]) & finite[:, None]
        correct1 += int(hits[:, 0].sum())
        correct5 += int(hits.any(dim=-1).sum())
        nonfinite += int((~finite).sum())
        seen += len(target)
        bar.update(len(target))
        bar.set_postfix(top1=f"{100 * correct1 / seen:.2f}")
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    bar.close()
    if not seen:
        raise UserError(f"none of the {len(dataset)} images could be decoded (first: {skipped[0]})")
    if nonfinite:
        log.warning(
            "%d of %d images gave non-finite logits (NaN/inf) and count as wrong: the model's weights or inputs are "
            "broken%s", nonfinite, seen, " (or float16 overflowed under --amp: try without)" if run.amp else "",
        )
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
        nonfinite=nonfinite,
        skipped=skipped,
    )
