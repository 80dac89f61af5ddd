"""Does segmentation learn? LR-ASPP on MobileNetV4 Conv-S, from scratch, on the generated shapes set
(``mnv4.synthetic_segmentation``: 64 px, the background and five shapes, 2,000 training and 200 validation images),
trained with the shipped ``shapes_proxy`` recipe through ``mnv4.segmentation.train_segmenter`` -- the code
``mnv4 segment train`` runs -- once per seed; reports the validation mIoU (model and EMA) of each
seed (and the IoU of each class), their mean, spread and minimum, next to what predicting the background everywhere
scores, and the wall time.

    python benchmarks/segment_proxy.py --seeds 0 1 2 --threads 1 --json segment_proxy.json

The same run from the command line (what docs/segmentation.md shows)::

    python -c "import mnv4; mnv4.synthetic_segmentation('shapes_seg')"
    mnv4 segment train --recipe shapes_proxy --train-images shapes_seg/train/images \\
        --train-masks shapes_seg/train/masks --val-images shapes_seg/val/images --val-masks shapes_seg/val/masks \\
        --class-names shapes_seg/classes.txt --out runs/shapes_seg

tests/test_segmentation_train.py::test_lraspp_learns_the_shapes holds a floor below the smallest mIoU measured here.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from mnv4.segmentation import (
    evaluate_segmenter,
    load_mask_folder,
    load_segment_config,
    load_segmenter,
    train_segmenter,
)
from mnv4.synthetic import synthetic_segmentation

RECIPE = "shapes_proxy"
TRAIN_IMAGES, VAL_IMAGES, SIZE = 2_000, 200, 64


def proxy_config(data, out: Path, seed: int, threads: int, **overrides):
    """The ``shapes_proxy`` recipe on the generated set ``data`` (a ``SegmentationSet``)."""
    return load_segment_config(
        RECIPE, train_images=str(data.images("train")), train_masks=str(data.masks("train")),
        val_images=str(data.images("val")), val_masks=str(data.masks("val")), class_names=str(data.classes_file),
        out=str(out), seed=seed, threads=threads, workers=1, progress=False, tensorboard=False, **overrides)


def background_only_miou(val) -> float:
    """mIoU of predicting the background everywhere on ``val`` (a ``MaskFolder``): IoU = the background's share of
    the pixels for class 0, 0 for every shape that occurs."""
    pixels = np.asarray(val.class_pixels)
    return float(pixels[0] / pixels.sum() / np.count_nonzero(pixels))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data", type=Path, default=None, help="where the set is (written if missing; default: temp)")
    p.add_argument("--runs", type=Path, default=None, help="keep each seed's run folder here (default: temp)")
    p.add_argument("--json", type=Path, default=None, help="also write the results as JSON")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        data = synthetic_segmentation(args.data or Path(tmp) / "shapes_seg", TRAIN_IMAGES, VAL_IMAGES, SIZE, seed=0)
        val = load_mask_folder(data.images("val"), data.masks("val"), data.num_classes)
        trivial = background_only_miou(val)
        rows = []
        for seed in args.seeds:
            start = time.perf_counter()
            result = train_segmenter(proxy_config(data, (args.runs or Path(tmp)) / f"seed{seed}", seed, args.threads))
            final = result.final
            minutes = (time.perf_counter() - start) / 60
            model, spec = load_segmenter(result.weights)
            iou = evaluate_segmenter(model, val, spec).iou  # per class, of the final model
            rows.append({"seed": seed, "val_miou": final["val_miou"], "ema_miou": final.get("ema_miou"),
                         "best_miou": result.best_miou, "pixel_accuracy": final["val_pixel_accuracy"],
                         "iou": dict(zip(data.class_names, iou, strict=True)), "steps": result.global_step,
                         "minutes": minutes})
            ema = f"EMA {final['ema_miou']:.4f}" if "ema_miou" in final else "no EMA"
            print(f"seed {seed}: mIoU {final['val_miou']:.4f} ({ema}), pixel acc {final['val_pixel_accuracy']:.4f}, "
                  f"{minutes:.1f} min; IoU per class: "
                  + ", ".join(f"{name} {v:.3f}" for name, v in rows[-1]["iou"].items()), flush=True)
    best = [r["best_miou"] for r in rows]
    summary = {"recipe": RECIPE, "data": {"train": TRAIN_IMAGES, "val": VAL_IMAGES, "size": SIZE,
                                          "classes": list(data.class_names), "fingerprint": data.fingerprint},
               "background_only_miou": trivial, "rows": rows, "best_miou_mean": statistics.mean(best),
               "best_miou_std": statistics.stdev(best) if len(best) > 1 else 0.0, "best_miou_min": min(best)}
    print(f"\nbest mIoU (the better of model and EMA at the last epoch): {' / '.join(f'{v:.4f}' for v in best)} "
          f"(seeds {' / '.join(str(s) for s in args.seeds)}); mean {summary['best_miou_mean']:.4f}, std "
          f"{summary['best_miou_std']:.4f}, min {summary['best_miou_min']:.4f}; background everywhere: {trivial:.4f}")
    if args.json:
        from mnv4.bench.environment import capture_environment

        args.json.write_text(json.dumps({"environment": capture_environment(args.threads), **summary}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
