"""Detection on image files: boxes, scores and category names per image, drawn onto the image with torchvision's
``draw_bounding_boxes`` and written as JSON. One unreadable file does not stop the others."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import UserError
from ..images import load_image
from .models import DetectorSpec


@dataclass
class Detections:
    """One image's detections, best first: ``boxes`` [x1, y1, x2, y2] in the image's pixels, ``scores``,
    ``category_ids`` (the training file's ids) and ``names``; ``error`` set (lists empty) if the file was unreadable."""

    path: str
    boxes: list[list[float]] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    category_ids: list[int] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict:
        return asdict(self)


@torch.inference_mode()
def detect(
    model: nn.Module,
    spec: DetectorSpec,
    images: Sequence[str | os.PathLike],
    score_thresh: float = 0.3,
    device: str | torch.device = "cpu",
) -> list[Detections]:
    """Run ``model`` (eval mode) on each image file; keep detections scoring at least ``score_thresh``."""
    from torchvision.transforms.v2.functional import pil_to_tensor

    if not 0 <= score_thresh <= 1:
        raise UserError(f"score_thresh must be in [0, 1], got {score_thresh}")
    model = model.eval().to(device)
    names = {i + 1: (int(c["id"]), str(c["name"])) for i, c in enumerate(spec.categories)}
    results = []
    for path in images:
        result = Detections(str(path))
        try:
            image = load_image(path)
        except (ValueError, FileNotFoundError) as err:
            result.error = str(err)
            results.append(result)
            continue
        x = pil_to_tensor(image).float().div_(255).to(device)
        out = model([x])[0]
        keep = out["scores"] >= score_thresh
        for box, score, label in zip(out["boxes"][keep].tolist(), out["scores"][keep].tolist(),
                                     out["labels"][keep].tolist(), strict=True):
            if label == 0:  # the background slot: SSD never outputs it, an untrained RetinaNet can
                continue
            category, name = names.get(label, (label, f"class {label}"))
            result.boxes.append([round(v, 2) for v in box])
            result.scores.append(round(score, 4))
            result.category_ids.append(category)
            result.names.append(name)
        results.append(result)
    return results


def draw_detections(path: str | os.PathLike, result: Detections, line_width: int = 2):
    """The image with its boxes and "name score" labels drawn (torchvision's ``draw_bounding_boxes``), as PIL."""
    from torchvision.transforms.v2.functional import pil_to_tensor, to_pil_image
    from torchvision.utils import draw_bounding_boxes

    image = pil_to_tensor(load_image(path))
    if not result.boxes:
        return to_pil_image(image)
    labels = [f"{n} {s:.2f}" for n, s in zip(result.names, result.scores, strict=True)]
    drawn = draw_bounding_boxes(image, torch.tensor(result.boxes), labels=labels, width=line_width)
    return to_pil_image(drawn)


def write_predictions(results: list[Detections], out_dir: str | os.PathLike) -> list[Path]:
    """For each readable image: ``<out>/<stem>.jpg``/``.png`` with the boxes drawn and ``<out>/<stem>.json``.
    Returns the written files (images and JSONs)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    stems: dict[str, int] = {}
    for result in results:
        if not result.ok:
            continue
        source = Path(result.path)
        stem = source.stem
        stems[stem] = stems.get(stem, 0) + 1
        if stems[stem] > 1:  # two inputs with the same name from different folders
            stem = f"{stem}_{stems[stem]}"
        suffix = ".jpg" if source.suffix.lower() in (".jpg", ".jpeg") else ".png"
        image_path, json_path = out / f"{stem}{suffix}", out / f"{stem}.json"
        draw_detections(source, result).save(image_path)
        json_path.write_text(json.dumps(result.to_dict(), indent=2))
        written += [image_path, json_path]
    return written
