"""COCO-format detection data (an instances JSON + an image folder): read, check, and serve to the model.

Every problem in the file is either an error that names it (``UserError``) or a documented repair/skip that is
counted and logged, never a silent drop:

errors (the file must be fixed): unreadable JSON; a missing top-level list (``images``, ``annotations``,
``categories``); an image without ``id``/``file_name``; an annotation without ``image_id``/``category_id``/
``bbox``, or with a bbox that is not four finite numbers; duplicate image or category ids; an annotation pointing
to an image or category id that the file does not define; no image file found at all.

repairs and skips (counted in ``CocoData.report``, logged as warnings):
- a box partly outside its image is clipped to it (torchvision's references and detectron2 do the same);
- a box with zero or negative width/height, or entirely outside its image, is dropped from training and from the
  evaluation ground truth (no prediction can match it; predictions are clipped to the image);
- an image whose file is missing is skipped (training and evaluation); a file that exists but cannot be decoded
  is replaced by the next one during training and logged (``mnv4.engine.metrics.BadFileLog``), as in classification;
- ``iscrowd=1`` annotations do not become training targets; COCOeval treats them as ignore regions;
- a missing annotation ``id`` / ``area`` / ``iscrowd`` is filled in (sequential id, box area, 0); a missing image
  ``width``/``height`` is read from the file;
- images without annotations are kept (background-only training samples; false positives there count in eval).

Category ids need not be contiguous (COCO's own run 1..90 with gaps): labels are 1..K in increasing id order,
0 is the background, and predictions map back to the file's ids (``CocoData.categories``).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import UserError

log = logging.getLogger("mnv4.detection")


@dataclass
class ImageRecord:
    id: int
    path: Path
    width: int
    height: int
    boxes: list[list[float]] = field(default_factory=list)  # x1, y1, x2, y2 in pixels, clipped, positive area
    labels: list[int] = field(default_factory=list)  # 1..K


@dataclass
class CocoData:
    """A checked COCO instances file. ``images`` are the usable images (file present); ``ground_truth`` is the
    repaired COCO dict for pycocotools (same ids, dropped boxes removed); ``report`` counts every repair/skip."""

    source: str
    images: list[ImageRecord]
    categories: list[dict]  # [{"id", "name"}] sorted by id: label i + 1 <-> categories[i]
    ground_truth: dict
    report: Counter = field(default_factory=Counter)
    examples: dict = field(default_factory=dict)  # report key -> first example (for the log line)

    @property
    def num_classes(self) -> int:
        """Detector outputs: the K categories + the background slot."""
        return len(self.categories) + 1

    def category_id(self, label: int) -> int:
        return int(self.categories[label - 1]["id"])

    def log_report(self) -> None:
        for key, count in sorted(self.report.items()):
            example = self.examples.get(key)
            log.warning("%s: %d %s%s", self.source, count, REPORT_TEXT[key], f" (first: {example})" if example else "")


REPORT_TEXT = {
    "missing_file": "images skipped: image file missing",
    "clipped": "boxes clipped to their image",
    "degenerate": "boxes dropped: zero or negative width/height",
    "outside": "boxes dropped: entirely outside the image",
    "crowd": "iscrowd=1 annotations not used as training targets (ignore regions in COCO eval)",
    "no_annotations": "images without annotations (kept: background-only)",
    "filled_id": "annotations without 'id': numbered",
    "filled_area": "annotations without 'area': set to the box area",
    "size_from_file": "images without 'width'/'height': read from the file",
}


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise UserError(f"annotation file {str(path)!r} does not exist")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as err:
        raise UserError(f"{path} is not valid JSON: {err}") from None
    except UnicodeDecodeError as err:
        raise UserError(f"{path} is not a UTF-8 text file: {err}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: a COCO instances file is a JSON object, got a {type(data).__name__}")
    return data


def _require_list(data: dict, key: str, path: Path) -> list:
    if key not in data:
        raise UserError(f"{path}: missing top-level field {key!r} (a COCO instances file has 'images', "
                        "'annotations' and 'categories')")
    if not isinstance(data[key], list):
        raise UserError(f"{path}: {key!r} must be a list, got {type(data[key]).__name__}")
    return data[key]


def _check_entries(entries: list, required: tuple[str, ...], what: str, path: Path) -> None:
    """One error naming how many entries lack each required field, with the first one."""
    for key in required:
        bad = [i for i, e in enumerate(entries) if not isinstance(e, dict) or key not in e]
        if bad:
            raise UserError(f"{path}: {len(bad)} of {len(entries)} {what} have no {key!r} field "
                            f"(first: {what} #{bad[0]}: {json.dumps(entries[bad[0]])[:120]})")


def _unique_ids(entries: list, what: str, path: Path) -> None:
    ids = Counter(e["id"] for e in entries)
    dup = [i for i, n in ids.items() if n > 1]
    if dup:
        raise UserError(f"{path}: {len(dup)} duplicate {what} ids (first: {dup[0]!r}); ids must be unique")


def _valid_bbox(bbox) -> bool:
    return (isinstance(bbox, (list, tuple)) and len(bbox) == 4
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in bbox))


def load_coco(annotations: str | os.PathLike, images: str | os.PathLike) -> CocoData:
    """Read and check ``annotations`` (COCO instances JSON) with image files under ``images``; see the module
    docstring for what is an error and what is repaired. Logs the repairs once."""
    path, root = Path(annotations), Path(images)
    data = _read_json(path)
    image_entries = _require_list(data, "images", path)
    ann_entries = _require_list(data, "annotations", path)
    cat_entries = _require_list(data, "categories", path)
    _check_entries(image_entries, ("id", "file_name"), "images", path)
    _check_entries(ann_entries, ("image_id", "category_id", "bbox"), "annotations", path)
    _check_entries(cat_entries, ("id",), "categories", path)
    _unique_ids(image_entries, "image", path)
    _unique_ids(cat_entries, "category", path)
    if not cat_entries:
        raise UserError(f"{path}: 'categories' is empty; a detector needs at least one category")
    if not root.is_dir():
        raise UserError(f"image folder {str(root)!r} does not exist")

    categories = sorted(({"id": c["id"], "name": str(c.get("name", c["id"]))} for c in cat_entries),
                        key=lambda c: c["id"])
    label_of = {c["id"]: i + 1 for i, c in enumerate(categories)}
    report: Counter = Counter()
    examples: dict = {}

    def note(key: str, example: str | None = None) -> None:
        report[key] += 1
        if example is not None:
            examples.setdefault(key, example)

    by_id: dict = {}
    kept_images: list[dict] = []
    for entry in image_entries:
        file = root / str(entry["file_name"])
        if not file.is_file():
            note("missing_file", str(file))
            continue
        width, height = entry.get("width"), entry.get("height")
        if not (isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0):
            width, height = _image_size(file)
            note("size_from_file", str(file))
        record = ImageRecord(entry["id"], file, width, height)
        by_id[entry["id"]] = record
        kept_images.append({**entry, "width": width, "height": height})
    if not by_id:
        first = image_entries[0]["file_name"] if image_entries else None
        raise UserError(
            f"none of the {len(image_entries)} images of {path} exist under {str(root)!r}"
            + (f" (first: {str(root / str(first))!r}); is the image folder right?" if first is not None else "")
        )
    known_images = {e["id"] for e in image_entries}

    kept_anns: list[dict] = []
    next_id = 1 + max((a["id"] for a in ann_entries if isinstance(a.get("id"), int)), default=0)
    for i, ann in enumerate(ann_entries):
        where = f"annotation {ann.get('id', f'#{i}')} of image {ann['image_id']}"
        if ann["image_id"] not in known_images:
            raise UserError(f"{path}: {where} refers to image id {ann['image_id']!r}, which 'images' does not define")
        if ann["category_id"] not in label_of:
            raise UserError(f"{path}: {where} has category_id {ann['category_id']!r}, which 'categories' does not "
                            f"define (defined: {sorted(label_of)[:20]})")
        if not _valid_bbox(ann["bbox"]):
            raise UserError(f"{path}: {where} has bbox {ann['bbox']!r}; expected [x, y, width, height] numbers")
        record = by_id.get(ann["image_id"])
        if record is None:  # its image file is missing: counted there
            continue
        x, y, w, h = (float(v) for v in ann["bbox"])
        if w <= 0 or h <= 0:
            note("degenerate", where)
            continue
        x1, y1 = min(max(x, 0.0), record.width), min(max(y, 0.0), record.height)
        x2, y2 = min(max(x + w, 0.0), record.width), min(max(y + h, 0.0), record.height)
        if x2 <= x1 or y2 <= y1:
            note("outside", where)
            continue
        if (x1, y1, x2, y2) != (x, y, x + w, y + h):
            note("clipped", where)
        ann = dict(ann)
        if not isinstance(ann.get("id"), int):
            ann["id"], next_id = next_id, next_id + 1
            note("filled_id")
        if "area" not in ann:
            ann["area"] = (x2 - x1) * (y2 - y1)
            note("filled_area")
        ann["iscrowd"] = int(ann.get("iscrowd", 0) or 0)
        ann["bbox"] = [x1, y1, x2 - x1, y2 - y1]
        kept_anns.append(ann)
        if ann["iscrowd"]:
            note("crowd", where)
            continue
        record.boxes.append([x1, y1, x2, y2])
        record.labels.append(label_of[ann["category_id"]])
    with_anns = {a["image_id"] for a in kept_anns}
    for record in by_id.values():
        if record.id not in with_anns:
            note("no_annotations", str(record.path))
    ground_truth = {"images": kept_images, "annotations": kept_anns, "categories": categories}
    coco = CocoData(str(path), list(by_id.values()), categories, ground_truth, report, examples)
    coco.log_report()
    return coco


def _image_size(file: Path) -> tuple[int, int]:
    from PIL import Image

    try:
        with Image.open(file) as image:  # reads the header only
            return image.size
    except (OSError, ValueError, SyntaxError) as err:
        raise UserError(f"{file} has no width/height in the annotation file and cannot be read as an image: "
                        f"{type(err).__name__}: {err}") from None


def targets_of(record: ImageRecord) -> dict[str, torch.Tensor]:
    """torchvision's training target for one image: ``boxes`` (N, 4) x1y1x2y2 float, ``labels`` (N,) int64."""
    boxes = torch.tensor(record.boxes, dtype=torch.float32).reshape(-1, 4)
    return {"boxes": boxes, "labels": torch.tensor(record.labels, dtype=torch.int64)}


class CocoDetectionDataset(torch.utils.data.Dataset):
    """Samples of a ``CocoData`` for torchvision detectors: ``(image, target, index, aug_epoch, bad_files)``.

    Indexed by ``(aug_epoch, index)`` like ``mnv4.data.ImageFolderDataset`` (so ``MicroBatchSampler`` drives it and
    a sample's augmentation is a function of ``(seed, aug_epoch, index)`` only: exact resume, any worker count).
    ``aug_epoch = -1`` (plain ``int`` index) means evaluation: no randomness. A file that cannot be decoded is
    reported in ``bad_files`` (the trainer logs each once) and replaced by the next decodable one -- or, with
    ``replace_bad=False`` (evaluation), returned without an image, so that ``collate_detection`` leaves it out and no
    image is scored against another's boxes.
    """

    def __init__(self, coco: CocoData, transform, seed: int = 0, replace_bad: bool = True):
        self.coco, self.transform, self.seed, self.replace_bad = coco, transform, seed, replace_bad

    def __len__(self) -> int:
        return len(self.coco.images)

    def __getitem__(self, key):
        from torchvision import tv_tensors

        from ..engine.seeds import AUG_STREAM, mix_seed
        from ..images import DecodeError
        from ..images import load_image as load_rgb

        aug_epoch, index = key if isinstance(key, tuple) else (-1, key)
        bad = []
        for attempt in range(len(self)):
            i = (index + attempt) % len(self)
            record = self.coco.images[i]
            try:
                image = load_rgb(record.path)
            except DecodeError as err:
                bad.append((str(record.path), str(err)))
                if not self.replace_bad:
                    return None, {"image_id": record.id}, i, aug_epoch, tuple(bad)
                continue
            target = targets_of(record)
            # the real decoded size: boxes were clipped to the file's stated size, the canvas must be the image's
            target["boxes"] = tv_tensors.BoundingBoxes(target["boxes"], format="XYXY", canvas_size=image.size[::-1])
            target["image_id"] = record.id
            if aug_epoch < 0:
                image, target = self.transform(image, target)
            else:
                with torch.random.fork_rng(devices=[]):  # v2 transforms draw from torch's global generator
                    torch.manual_seed(mix_seed(self.seed, AUG_STREAM, aug_epoch, i))
                    image, target = self.transform(image, target)
            target["boxes"] = target["boxes"].as_subclass(torch.Tensor)
            return image, target, i, aug_epoch, tuple(bad)
        raise RuntimeError(f"no image of {self.coco.source} could be decoded")


def collate_detection(batch):
    """Images and targets as lists (torchvision detectors take lists); indices; skipped files. Samples without an
    image (undecodable, in evaluation) are left out."""
    bad = [entry for sample in batch for entry in sample[4]]
    kept = [sample for sample in batch if sample[0] is not None]
    if not kept:
        return [], [], [], bad
    images, targets, indices, _, _ = zip(*kept, strict=True)
    return list(images), list(targets), list(indices), bad
