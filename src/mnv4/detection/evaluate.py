"""COCO box metrics of a detector on a COCO-format data set, computed by pycocotools' ``COCOeval`` (the reference
implementation every detection paper reports), never by a mAP of our own.

``evaluate_detector`` runs the model over the images (sharded over ranks under torchrun), converts detections to
COCO results (boxes as [x, y, w, h] in the image's pixels, labels mapped back to the file's category ids) and returns
the 12 standard numbers plus pycocotools' own summary table.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass

import torch
from torch import nn

from .coco import CocoData, CocoDetectionDataset, collate_detection

# COCOeval.stats order (iouType 'bbox'): AP@[.5:.95], AP50, AP75, AP small/medium/large, AR@1/10/100, AR s/m/l
METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


@dataclass
class CocoMetrics:
    """The 12 COCOeval numbers as fractions (``-1`` where COCO defines none, e.g. no small objects), the printed
    table, and how many images / detections went in."""

    stats: dict[str, float]
    table: str
    num_images: int
    num_detections: int

    def __getitem__(self, name: str) -> float:
        return self.stats[name]


def require_pycocotools():
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError as err:
        from ..export import MissingExtraError

        raise MissingExtraError(
            f"pycocotools is not installed ({err}); install it with: pip install 'mnv4[detection]'"
        ) from None
    return COCO, COCOeval


def coco_results(detections: list[dict], image_ids: list[int], coco: CocoData) -> list[dict]:
    """torchvision detections (x1y1x2y2 boxes, labels 1..K) -> COCO result dicts with the file's category ids."""
    results = []
    for det, image_id in zip(detections, image_ids, strict=True):
        boxes = det["boxes"].detach().cpu().double()
        boxes[:, 2:] -= boxes[:, :2]
        for box, score, label in zip(boxes.tolist(), det["scores"].tolist(), det["labels"].tolist(), strict=True):
            if label == 0:  # the background slot (SSD never emits it; a RetinaNet could)
                continue
            results.append({"image_id": int(image_id), "category_id": coco.category_id(int(label)),
                            "bbox": [round(v, 3) for v in box], "score": round(float(score), 5)})
    return results


def coco_evaluate(coco: CocoData, results: list[dict], image_ids: list[int] | None = None) -> CocoMetrics:
    """pycocotools' COCOeval (bbox) of ``results`` against ``coco``'s ground truth, over ``image_ids`` (default: all
    usable images). An empty ``results`` is evaluated too (AP 0), through an empty detection set."""
    COCO, COCOeval = require_pycocotools()
    ids = sorted(image_ids if image_ids is not None else (r.id for r in coco.images))
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = coco.ground_truth
        gt.createIndex()
        if results:
            dt = gt.loadRes(results)
        else:
            dt = COCO()
            dt.dataset = {"images": coco.ground_truth["images"], "annotations": [], "categories": coco.categories}
            dt.createIndex()
        evaluator = COCOeval(gt, dt, "bbox")
        evaluator.params.imgIds = ids
        evaluator.evaluate()
        evaluator.accumulate()
    table = io.StringIO()
    with contextlib.redirect_stdout(table):
        evaluator.summarize()
    stats = {name: float(v) for name, v in zip(METRIC_NAMES, evaluator.stats, strict=True)}
    return CocoMetrics(stats, table.getvalue().rstrip(), len(ids), len(results))


@torch.no_grad()
def detect_images(model: nn.Module, loader, device: torch.device, bad_log=None) -> tuple[list[dict], list[int]]:
    """Run ``model`` (eval mode) over a loader of ``collate_detection`` batches: detections and image ids."""
    model.eval()
    detections, image_ids = [], []
    for images, targets, _, bad in loader:
        if bad_log is not None:
            bad_log(bad)
        if not images:  # every file of this batch was undecodable
            continue
        outputs = model([im.to(device, non_blocking=True) for im in images])
        detections += [{k: v.cpu() for k, v in out.items()} for out in outputs]
        image_ids += [t["image_id"] for t in targets]
    return detections, image_ids


def evaluate_detector(
    model: nn.Module,
    coco: CocoData,
    device: str | torch.device = "cpu",
    batch_size: int = 8,
    workers: int = 0,
    world_size: int = 1,
    rank: int = 0,
    bad_log=None,
) -> CocoMetrics | None:
    """COCO metrics of ``model`` on ``coco``. Under torchrun each rank runs its shard and rank 0 evaluates (the
    others return None). An image file that cannot be decoded is never stood in for by another (its detections
    would be scored against another image's boxes): without ``bad_log`` it raises ``UserError`` naming it
    (``mnv4 detect eval``); with one (training's validation) it is logged there, left out and the metrics are over
    the images that were scored (``CocoMetrics.num_images``)."""
    from ..engine.seeds import ShardSampler
    from .augment import eval_transform

    device = torch.device(device)
    dataset = CocoDetectionDataset(coco, eval_transform(), replace_bad=False)
    sampler = ShardSampler(len(dataset), batch_size, world_size, rank)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=workers,
                                         collate_fn=collate_detection)
    detections, image_ids = detect_images(model, loader, device, bad_log=bad_log or _fail_on_bad_file)
    results = coco_results(detections, image_ids, coco)
    if world_size > 1:
        gathered: list = [None] * world_size
        torch.distributed.all_gather_object(gathered, (results, image_ids))
        results = [r for part, _ in gathered for r in part]
        image_ids = [i for _, ids in gathered for i in ids]
    if rank != 0:
        return None
    return coco_evaluate(coco, results, image_ids)


def _fail_on_bad_file(bad: list[tuple[str, str]]) -> None:
    if bad:
        from ..errors import UserError

        path, reason = bad[0]
        raise UserError(f"cannot evaluate: {path} is not a readable image ({reason}); fix the file or remove it "
                        "from the annotation file")
