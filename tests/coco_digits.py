"""Real-glyph detection data for tests: scikit-learn's handwritten digits pasted on cluttered canvases, written as a
COCO instances file + image folder (the format ``mnv4 detect`` reads).

Each canvas (128-256 px per side) has a smooth colour gradient, pixel noise and clutter (lines, rectangle outlines,
filled blobs), then 1-4 digits at 16-64 px, each in a colour contrasting with the local background. A digit's box is
the extent of its ink (8x8 glyph upscaled bicubically, alpha > 0.3), not of the pasted square. Train and val use
disjoint glyph samples. Category ids are deliberately not contiguous (``2 * digit + 1``) so every run exercises the
label <-> category-id mapping.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

CATEGORY_STRIDE = 2  # category id = 2 * digit + 1: 1, 3, 5, ... (COCO's own ids have gaps too)


def category_id(digit: int) -> int:
    return CATEGORY_STRIDE * digit + 1


def _glyph(image8: np.ndarray, size: int) -> np.ndarray:
    """An 8x8 digit (0..16) as a size x size alpha mask in [0, 1] (bicubic upscale)."""
    from PIL import Image

    small = Image.fromarray((image8 / 16.0 * 255).astype(np.uint8), mode="L")
    return np.asarray(small.resize((size, size), Image.BICUBIC), dtype=np.float32) / 255.0


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    from PIL import Image, ImageDraw

    corners = rng.uniform(40, 215, size=(2, 2, 3))
    ys, xs = np.linspace(0, 1, h)[:, None, None], np.linspace(0, 1, w)[None, :, None]
    top = corners[0, 0] * (1 - xs) + corners[0, 1] * xs
    bottom = corners[1, 0] * (1 - xs) + corners[1, 1] * xs
    canvas = top * (1 - ys) + bottom * ys + rng.normal(0, 12, size=(h, w, 3))
    image = Image.fromarray(canvas.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(3, 9))):  # clutter: strokes, outlines and blobs that are not digits
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        x1, y1 = int(np.clip(x0 + rng.integers(-60, 61), 0, w)), int(np.clip(y0 + rng.integers(-60, 61), 0, h))
        kind = rng.integers(3)
        if kind == 0:
            draw.line([x0, y0, x1, y1], fill=colour, width=int(rng.integers(1, 4)))
        elif kind == 1:
            draw.rectangle([min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)], outline=colour,
                           width=int(rng.integers(1, 3)))
        else:
            r = int(rng.integers(3, 12))
            draw.ellipse([x0 - r, y0 - r, x0 + r, y0 + r], fill=colour)
    return np.asarray(image, dtype=np.float32)


def _overlaps(box: list[float], boxes: list[list[float]], margin: float = 2.0) -> bool:
    x, y, w, h = box
    return any(x < bx + bw + margin and bx < x + w + margin and y < by + bh + margin and by < y + h + margin
               for bx, by, bw, bh in boxes)


def write_coco_digits(
    root: str | Path,
    num_images: int = 64,
    split: str = "train",
    digits: tuple[int, ...] = tuple(range(10)),
    size_range: tuple[int, int] = (128, 256),
    glyph_range: tuple[int, int] = (16, 64),
    max_digits: int = 4,
    seed: int = 0,
) -> tuple[Path, Path]:
    """Write ``root/<split>/*.png`` and ``root/<split>.json``; returns (annotation file, image folder). Idempotent
    for the same arguments (a marker file records them)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    root = Path(root)
    images_dir, ann_file = root / split, root / f"{split}.json"
    marker = root / f".{split}.done"
    signature = json.dumps([num_images, digits, size_range, glyph_range, max_digits, seed])
    if marker.exists() and marker.read_text() == signature:
        return ann_file, images_dir
    images_dir.mkdir(parents=True, exist_ok=True)
    data = load_digits()
    parity = 0 if split == "train" else 1  # disjoint glyph samples for train and val
    pool = {d: np.flatnonzero(data.target == d)[parity::2] for d in digits}
    rng = np.random.default_rng([seed, parity])
    images, annotations = [], []
    for image_id in range(1, num_images + 1):
        h, w = (int(v) for v in rng.integers(size_range[0], size_range[1] + 1, size=2))
        canvas = _background(rng, h, w)
        boxes: list[list[float]] = []
        for _ in range(int(rng.integers(1, max_digits + 1))):
            digit = int(rng.choice(digits))
            size = int(rng.integers(glyph_range[0], min(glyph_range[1], h, w) + 1))
            alpha = _glyph(data.images[int(rng.choice(pool[digit]))], size)
            ys, xs = np.nonzero(alpha > 0.3)
            for _attempt in range(20):
                x0, y0 = int(rng.integers(0, w - size + 1)), int(rng.integers(0, h - size + 1))
                box = [float(x0 + xs.min()), float(y0 + ys.min()), float(xs.max() - xs.min() + 1),
                       float(ys.max() - ys.min() + 1)]
                if not _overlaps(box, boxes):
                    break
            else:
                continue
            region = canvas[y0:y0 + size, x0:x0 + size]
            ink = np.where(region.mean() > 128, rng.uniform(0, 60, 3), rng.uniform(195, 255, 3))
            canvas[y0:y0 + size, x0:x0 + size] = region * (1 - alpha[..., None]) + ink * alpha[..., None]
            boxes.append(box)
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": category_id(digit),
                                "bbox": box, "area": box[2] * box[3], "iscrowd": 0})
        name = f"{image_id:05d}.png"
        Image.fromarray(canvas.clip(0, 255).astype(np.uint8)).save(images_dir / name)
        images.append({"id": image_id, "file_name": name, "width": w, "height": h})
    categories = [{"id": category_id(d), "name": str(d)} for d in digits]
    ann_file.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    marker.write_text(signature)
    return ann_file, images_dir


def write_coco(root: Path, images=None, annotations=None, categories=None, drop: str | None = None,
               files: bool = True) -> tuple[Path, Path]:
    """A hand-made COCO file for the bad-input checks: two 100x80 images (ids 1, 2), categories 3 and 8."""
    from PIL import Image

    images = images if images is not None else [
        {"id": 1, "file_name": "a.png", "width": 100, "height": 80},
        {"id": 2, "file_name": "b.png", "width": 100, "height": 80},
    ]
    annotations = annotations if annotations is not None else [
        {"id": 1, "image_id": 1, "category_id": 3, "bbox": [10, 10, 30, 20], "area": 600, "iscrowd": 0},
        {"id": 2, "image_id": 2, "category_id": 8, "bbox": [50, 30, 20, 40], "area": 800, "iscrowd": 0},
    ]
    categories = categories if categories is not None else [{"id": 3, "name": "three"}, {"id": 8, "name": "eight"}]
    data = {"images": images, "annotations": annotations, "categories": categories}
    if drop:
        del data[drop]
    folder = root / "images"
    folder.mkdir(parents=True, exist_ok=True)
    if files:
        for image in (i for i in images if "file_name" in i):
            Image.new("RGB", (image.get("width", 100), image.get("height", 80)), (120, 90, 60)).save(
                folder / image["file_name"])
    path = root / "instances.json"
    path.write_text(json.dumps(data))
    return path, folder
