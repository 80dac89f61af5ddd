"""Segmentation data: images with label masks, read and checked before anything runs, served with joint augmentation.

Two sources, one interface (``len``, ``load(i) -> (RGB image, label array)``, ``name(i)``, ``num_classes``):

- ``load_mask_folder(images, masks, num_classes)``: an image folder and a mask folder paired by relative path
  without suffix (``images/a/b.jpg`` <-> ``masks/a/b.png``), e.g. VOC's ``JPEGImages`` + ``SegmentationClass`` with
  a split file (``ImageSets/Segmentation/train.txt``), or ADE20K's ``images/training`` + ``annotations/training``.
  Masks are PNGs holding one class number per pixel: palette PNGs (VOC: the palette index is the class, the colours
  are only for viewing), 8-bit greyscale or 16-bit index PNGs; ``ignore_index`` (255) marks pixels that no loss or
  metric sees (VOC's object boundaries).
- ``load_coco_masks(annotations, images)``: a COCO instances JSON turned into semantic masks (polygons and RLEs
  through pycocotools, as ``COCO.annToMask``): label 0 is the background, the categories (all, or the ids given,
  in that order) are 1..K. Pixels covered by two or more instances are ignored (255), as torchvision's segmentation
  reference does; crowd regions are ignored too (``crowd="ignore"``; torchvision's reference labels them as their
  category: ``crowd="label"``).

Everything that can be checked before training is, and fails as one ``UserError`` that names the file and what to do:
an image without a mask or a mask without an image (or a split entry with neither), two files for one name, a mask
that is not a PNG or not single-channel (an RGB mask), a mask whose size differs from its image's (after the image's
EXIF rotation, which ``mnv4.images`` applies), a label >= ``num_classes`` that is not ``ignore_index``; in COCO
files, what ``mnv4.detection.load_coco`` refuses plus an annotation without a valid ``segmentation``.

``SegmentationDataset`` serves ``(image, mask, index, aug_epoch, bad_files)`` keyed by ``(aug_epoch, index)``, like
``mnv4.train.data.ImageFolderDataset`` and ``mnv4.detection.CocoDetectionDataset``: every sample's augmentation is a
function of ``(seed, aug_epoch, index)`` only, so a run resumes exactly and any worker count gives the same batches.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import UserError
from ..images import DecodeError, is_image_file, load_image

log = logging.getLogger("mnv4.segmentation")

IGNORE_INDEX = 255
MASK_SUFFIX = ".png"  # lossless: a JPEG mask would carry made-up labels along every edge
# PIL modes that hold one number per pixel: palette (the index), greyscale, 16/32-bit integer, bilevel.
INDEX_MODES = ("P", "L", "I;16", "I;16B", "I;16L", "I", "1")
EXIF_ORIENTATION = 0x0112


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """The label array (H, W) of a mask PNG: palette indices, or the grey / 16-bit values; int64."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            mode = image.mode
            labels = np.asarray(image, dtype=np.int64) if mode in INDEX_MODES else None
    except (OSError, SyntaxError, ValueError) as err:
        raise UserError(f"{path}: not a readable PNG mask ({type(err).__name__}: {err})") from None
    if labels is None:
        hint = (" (colour-coded labels? map each colour to its class number and save a palette or greyscale PNG)"
                if mode.startswith("RGB") else "")
        raise UserError(f"{path}: a {mode} image; a label mask has one class number per pixel (a palette, 8-bit "
                        f"greyscale or 16-bit PNG){hint}")
    return labels


def upright_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image as ``mnv4.images.load_image`` returns it: EXIF orientations 5-8 swap the sides.
    Reads the header only."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            orientation = image.getexif().get(EXIF_ORIENTATION, 1)
    except (OSError, SyntaxError, ValueError) as err:
        raise DecodeError(path, f"cannot be read as an image ({type(err).__name__}: {err})") from None
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def _check_labels(labels: np.ndarray, num_classes: int, ignore_index: int, where: str) -> np.ndarray:
    """The pixel count of each class (ignored pixels left out); one error naming the labels out of range."""
    bad = np.unique(labels[(labels != ignore_index) & ((labels < 0) | (labels >= num_classes))])
    if bad.size:
        shown = ", ".join(str(v) for v in bad[:8]) + (" ..." if bad.size > 8 else "")
        raise UserError(f"{where}: labels {shown} are not classes: with num_classes={num_classes} a mask holds "
                        f"0..{num_classes - 1}, or {ignore_index} for pixels to ignore")
    return np.bincount(labels[labels != ignore_index].ravel(), minlength=num_classes)


# ---------------------------------------------------------------------------------------------------- mask folders
def _files_by_key(root: Path, what: str) -> dict[str, Path]:
    """Image files under ``root`` (any depth, hidden files and folders skipped) keyed by relative path without
    suffix; two files with one key is an error."""
    files: dict[str, Path] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file() or not is_image_file(path):
            continue
        key = rel.with_suffix("").as_posix()
        if key in files:
            raise UserError(f"{what} {files[key]} and {path} have one name ({key!r}); keep one of them")
        files[key] = path
    return files


def _read_split(path: Path) -> list[str]:
    if not path.is_file():
        raise UserError(f"split file {str(path)!r} does not exist")
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    names = [name.split()[0] for name in names if name]  # VOC's per-class lists add a column: keep the name
    if not names:
        raise UserError(f"split file {path} lists no images")
    return names


def _unpaired_error(missing: list[str], have: str, lack: str, hint: str) -> UserError:
    shown = ", ".join(repr(k) for k in missing[:3]) + (f" (+{len(missing) - 3} more)" if len(missing) > 3 else "")
    return UserError(f"{len(missing)} {have} without {lack}: {shown}; {hint}")


@dataclass
class MaskFolder:
    """A checked folder data set (``load_mask_folder``): ``pairs`` of (image, mask) paths, ``class_pixels`` the
    labelled pixels per class over all masks (ignored pixels not counted)."""

    source: str
    pairs: list[tuple[Path, Path]]
    num_classes: int
    ignore_index: int = IGNORE_INDEX
    class_pixels: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.pairs)

    def name(self, index: int) -> str:
        return str(self.pairs[index][0])

    def load(self, index: int) -> tuple[Image.Image, np.ndarray]:
        image_path, mask_path = self.pairs[index]
        image = load_image(image_path)  # DecodeError: the caller replaces or reports the file
        return image, read_mask(mask_path)


def load_mask_folder(
    images: str | os.PathLike,
    masks: str | os.PathLike,
    num_classes: int,
    split: str | os.PathLike | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> MaskFolder:
    """Pair and check an image folder and a mask folder (see the module docstring); every mask is read once.

    ``split``: a text file with one name per line (relative path without suffix, e.g. VOC's ``2007_000032``): only
    those pairs, and each must have both files. Without it every image needs a mask and every mask an image.
    """
    image_root, mask_root = Path(images), Path(masks)
    for root, what in ((image_root, "image"), (mask_root, "mask")):
        if not root.is_dir():
            raise UserError(f"{what} folder {str(root)!r} does not exist")
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or not 2 <= num_classes <= ignore_index:
        raise UserError(f"num_classes must be an int in [2, {ignore_index}] (labels below the ignore index "
                        f"{ignore_index}), got {num_classes!r}")
    image_files = _files_by_key(image_root, "images")
    mask_files = _files_by_key(mask_root, "masks")
    not_png = [p for p in mask_files.values() if p.suffix.lower() != MASK_SUFFIX]
    if not_png:
        raise UserError(f"{len(not_png)} masks are not PNG files (first: {not_png[0]}): masks must be lossless PNGs "
                        "(a JPEG changes the label numbers along every edge)")
    if split is not None:
        keys = _read_split(Path(split))
        for files, what in ((image_files, f"images under {image_root}"), (mask_files, f"masks under {mask_root}")):
            missing = [k for k in keys if k not in files]
            if missing:
                raise _unpaired_error(missing, f"names in {split}", what,
                                      "fix the split file or add the files (names are paths without suffix)")
    else:
        no_mask = [k for k in image_files if k not in mask_files]
        no_image = [k for k in mask_files if k not in image_files]
        hint = ("pair them by name (images/a/b.jpg <-> masks/a/b.png), or pass a split file listing the images to "
                "use (e.g. VOC's ImageSets/Segmentation/train.txt)")
        if no_mask:
            raise _unpaired_error(no_mask, f"images under {image_root}", f"a mask under {mask_root}", hint)
        if no_image:
            raise _unpaired_error(no_image, f"masks under {mask_root}", f"an image under {image_root}", hint)
        keys = sorted(image_files)
    if not keys:
        raise UserError(f"no images found under {str(image_root)!r}")
    pixels = np.zeros(num_classes, dtype=np.int64)
    for key in keys:
        image_path, mask_path = image_files[key], mask_files[key]
        labels = read_mask(mask_path)
        size = upright_size(image_path)
        if labels.shape[::-1] != size:
            raise UserError(f"{mask_path} is {labels.shape[1]}x{labels.shape[0]} but its image {image_path} is "
                            f"{size[0]}x{size[1]} (width x height, after EXIF rotation); a mask labels its image's "
                            "pixels one for one")
        pixels += _check_labels(labels, num_classes, ignore_index, str(mask_path))
    pairs = [(image_files[k], mask_files[k]) for k in keys]
    return MaskFolder(f"{image_root} + {mask_root}", pairs, num_classes, ignore_index, pixels.tolist())


# ---------------------------------------------------------------------------------------------------- COCO
CROWD_MODES = ("ignore", "label")


def _valid_segmentation(segmentation, height: int, width: int) -> bool:
    if isinstance(segmentation, list):  # polygons: lists of x, y, x, y, ... (>= 3 points)
        return all(isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0 and
                   all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in p) for p in segmentation)
    if isinstance(segmentation, dict):  # RLE, uncompressed (counts: list) or compressed (counts: str)
        size = segmentation.get("size")
        return isinstance(segmentation.get("counts"), (list, str)) and list(size or []) == [height, width]
    return False


def instance_mask(segmentation, height: int, width: int) -> np.ndarray:
    """One annotation's pixels (bool, H x W) from its polygons or RLE (pycocotools, as ``COCO.annToMask``)."""
    from pycocotools import mask as coco_mask

    if isinstance(segmentation, list):
        if not segmentation:
            return np.zeros((height, width), dtype=bool)
        rle = coco_mask.merge(coco_mask.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation["counts"], list):
        rle = coco_mask.frPyObjects(segmentation, height, width)
    else:
        rle = segmentation
    return coco_mask.decode(rle).astype(bool)


@dataclass
class CocoImage:
    path: Path
    width: int
    height: int
    instances: list[tuple[int, object]] = field(default_factory=list)  # (label, segmentation)
    crowds: list[tuple[int, object]] = field(default_factory=list)


@dataclass
class CocoMasks:
    """A COCO instances file as a segmentation data set (``load_coco_masks``). ``class_names``: "background", then
    the category names in label order; ``category_ids``: the file's id of label i (index 0: None)."""

    source: str
    images: list[CocoImage]
    class_names: list[str]
    category_ids: list[int | None]
    crowd: str = "ignore"
    ignore_index: int = IGNORE_INDEX

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.images)

    def name(self, index: int) -> str:
        return str(self.images[index].path)

    def mask(self, index: int) -> np.ndarray:
        """The semantic mask: instances painted with their label; pixels of two or more instances -> ignore
        (torchvision's reference); crowd regions -> ignore (``crowd="ignore"``) or their label (``"label"``)."""
        record = self.images[index]
        h, w = record.height, record.width
        labels = np.zeros((h, w), dtype=np.int64)
        cover = np.zeros((h, w), dtype=np.int32)
        instances = record.instances + (record.crowds if self.crowd == "label" else [])
        for label, segmentation in instances:
            pixels = instance_mask(segmentation, h, w)
            labels[pixels] = label
            cover += pixels
        labels[cover > 1] = self.ignore_index
        if self.crowd == "ignore":
            for _, segmentation in record.crowds:
                labels[instance_mask(segmentation, h, w)] = self.ignore_index
        return labels

    def load(self, index: int) -> tuple[Image.Image, np.ndarray]:
        record = self.images[index]
        image = load_image(record.path)
        if image.size != (record.width, record.height):
            raise UserError(f"{record.path} is {image.size[0]}x{image.size[1]} but {self.source} says "
                            f"{record.width}x{record.height}; its polygons are drawn at that size: fix the file's "
                            "'width'/'height' or the image")
        return image, self.mask(index)


def load_coco_masks(
    annotations: str | os.PathLike,
    images: str | os.PathLike,
    categories: Sequence[int] | None = None,
    crowd: str = "ignore",
    ignore_index: int = IGNORE_INDEX,
) -> CocoMasks:
    """A checked COCO instances file as semantic masks. ``categories``: the category ids to segment, in label order
    (1..K; e.g. torchvision's 20 VOC classes on COCO: 5, 2, 16, 9, 44, 6, 3, 17, 62, 21, 67, 18, 19, 4, 1, 64, 20,
    63, 7, 72); None = every category, by id. Annotations of other categories are dropped (their pixels are
    background). The file is checked by ``mnv4.detection.load_coco`` (ids, references, missing image files)."""
    from ..detection.coco import load_coco
    from ..detection.evaluate import require_pycocotools

    require_pycocotools()
    if crowd not in CROWD_MODES:
        raise UserError(f"crowd must be one of {CROWD_MODES}, got {crowd!r}")
    coco = load_coco(annotations, images)
    names = {int(c["id"]): c["name"] for c in coco.categories}
    wanted = [int(c["id"]) for c in coco.categories] if categories is None else list(categories)
    unknown = [c for c in wanted if c not in names]
    if unknown or len(set(wanted)) != len(wanted) or not wanted:
        raise UserError(f"categories must be distinct ids that {annotations} defines ({sorted(names)[:20]}), got "
                        f"{list(wanted)}")
    if len(wanted) + 1 > ignore_index:
        raise UserError(f"{len(wanted)} categories + background do not fit below the ignore index {ignore_index}")
    label_of = {cid: i + 1 for i, cid in enumerate(wanted)}
    records = {r.id: CocoImage(r.path, r.width, r.height) for r in coco.images}
    for ann in coco.ground_truth["annotations"]:
        record = records.get(ann["image_id"])
        if record is None or ann["category_id"] not in label_of:
            continue
        segmentation = ann.get("segmentation")
        if not _valid_segmentation(segmentation, record.height, record.width):
            raise UserError(f"{annotations}: annotation {ann.get('id')} of image {ann['image_id']} has no valid "
                            "'segmentation' (polygons [[x, y, ...], ...] of >= 3 points, or an RLE of the image's "
                            f"size {record.height}x{record.width}); got {str(segmentation)[:80]}")
        target = record.crowds if ann.get("iscrowd") else record.instances
        target.append((label_of[ann["category_id"]], segmentation))
    class_names = ["background"] + [str(names[c]) for c in wanted]
    return CocoMasks(str(annotations), list(records.values()), class_names, [None, *wanted], crowd, ignore_index)


# ---------------------------------------------------------------------------------------------------- transforms
def train_transform(
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
    scale_range: tuple[float, float] = (0.5, 2.0),
    hflip: bool = True,
    ignore_index: int = IGNORE_INDEX,
    base_size: int | None = None,
):
    """Joint image + mask augmentation (torchvision's segmentation reference): resize so the shorter side is
    ``base_size`` (default: ``size``) times a random factor in ``scale_range`` (masks by nearest neighbour), a random
    ``size`` x ``size`` crop padded with 0 (image) and ``ignore_index`` (mask) where the image is smaller, a random
    horizontal flip; then the image as normalised float. (image, mask) as ``tv_tensors`` -> (float (3, size, size),
    int64 (size, size)). torchvision's reference: ``base_size`` 520 (its evaluation size), crop ``size`` 480."""
    from torchvision import tv_tensors
    from torchvision.transforms import v2

    lo, hi = (max(1, round((base_size or size) * s)) for s in scale_range)
    if not 0 < lo <= hi:
        raise UserError(f"scale_range must be two positive factors, low to high, got {scale_range!r}")
    ops: list = [
        v2.RandomResize(lo, hi + 1, antialias=True),
        v2.RandomCrop(size, pad_if_needed=True, fill={tv_tensors.Image: 0, tv_tensors.Mask: ignore_index}),
    ]
    if hflip:
        ops.append(v2.RandomHorizontalFlip())
    ops += [v2.ToDtype({tv_tensors.Image: torch.float32, tv_tensors.Mask: torch.int64}, scale=True),
            v2.Normalize(list(mean), list(std))]
    return v2.Compose(ops)


class EvalTransform:
    """Evaluation and prediction: the image resized so its shorter side is ``size`` (None: as it is) and
    normalised; the mask untouched, so metrics are taken at each image's own resolution."""

    def __init__(self, size: int | None, mean: Sequence[float], std: Sequence[float]):
        from torchvision.transforms import v2

        ops: list = [v2.Resize(size, antialias=True)] if size else []
        self.image = v2.Compose(ops + [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))])

    def __call__(self, image, mask):
        return self.image(image), mask.as_subclass(torch.Tensor).long()


# ---------------------------------------------------------------------------------------------------- data set
class SegmentationDataset(torch.utils.data.Dataset):
    """Samples of a ``MaskFolder`` or ``CocoMasks``: ``(image, mask, index, aug_epoch, bad_files)``.

    Keyed by ``(aug_epoch, index)`` (``mnv4.engine.MicroBatchSampler`` drives it); the augmentation of a sample is
    seeded by ``(seed, aug_epoch, index)`` alone. A plain ``int`` key (``aug_epoch = -1``) means evaluation: no
    randomness. ``transform(image, mask)`` takes ``tv_tensors.Image`` (uint8) and ``tv_tensors.Mask`` (int64).
    An image that cannot be decoded is replaced by the next decodable one and reported in ``bad_files``
    (``replace_bad=True``, training); with ``replace_bad=False`` (evaluation) the sample comes back without image and
    mask (``None``), the file in ``bad_files``: scoring one image's prediction against another's mask would be wrong,
    so ``collate_segmentation`` leaves it out and the evaluation decides (``confusion_over``: an error, or skipped and
    counted).
    """

    def __init__(self, data: MaskFolder | CocoMasks, transform, seed: int = 0, replace_bad: bool = True):
        self.data, self.transform, self.seed, self.replace_bad = data, transform, seed, replace_bad

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, key):
        from torchvision import tv_tensors
        from torchvision.transforms.v2.functional import pil_to_tensor

        from ..engine.seeds import AUG_STREAM, mix_seed

        aug_epoch, index = key if isinstance(key, tuple) else (-1, key)
        bad: list[tuple[str, str]] = []
        for attempt in range(len(self.data)):
            i = (index + attempt) % len(self.data)
            try:
                image, labels = self.data.load(i)
            except DecodeError as err:
                bad.append((self.data.name(i), str(err)))
                if not self.replace_bad:
                    return None, None, i, aug_epoch, tuple(bad)
                continue
            image = tv_tensors.Image(pil_to_tensor(image))
            mask = tv_tensors.Mask(torch.from_numpy(labels))
            if aug_epoch < 0:
                image, mask = self.transform(image, mask)
            else:
                with torch.random.fork_rng(devices=[]):  # v2 transforms draw from torch's global generator
                    torch.manual_seed(mix_seed(self.seed, AUG_STREAM, aug_epoch, i))
                    image, mask = self.transform(image, mask)
            return image.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor), i, aug_epoch, tuple(bad)
        raise UserError(f"no image of {self.data.source} could be decoded")


def collate_segmentation(batch):
    """(images, masks, indices, skipped files): images and masks stacked when they share a size (training crops),
    else lists (evaluation at each image's own size). Evaluation samples whose image could not be decoded (no image)
    are left out; their files are in the skipped list."""
    skipped = [entry for sample in batch for entry in sample[4]]
    kept = [sample for sample in batch if sample[0] is not None]
    if not kept:
        return [], [], torch.zeros(0, dtype=torch.long), skipped
    images, masks, indices, _, _ = zip(*kept, strict=True)

    def stack(tensors):
        same = all(t.shape == tensors[0].shape for t in tensors)
        return torch.stack(tensors) if same else list(tensors)

    return stack(images), stack(masks), torch.tensor(indices, dtype=torch.long), skipped
