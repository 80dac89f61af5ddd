"""``mnv4 eval --data DIR --model TAG``: ImageNet-protocol top-1 / top-5 on an image folder."""

from __future__ import annotations

import argparse
import json

from .predict import add_model_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="top-1 / top-5 and images/s on an ImageFolder or the ImageNet val layout",
        description="Evaluate a MobileNetV4 with the ImageNet protocol (resize to size / crop_pct, bicubic, "
        "centre crop, normalise; the tag's own values). DIR is an ImageFolder (DIR/<class>/<image>, classes = "
        "sorted folder names, i.e. the standard indices for ImageNet synset folders) or, with --labels, a flat "
        "folder plus a text file of 'filename label' lines (0-based class index). The resolution and crop are "
        "printed next to the accuracy.",
    )
    p.add_argument("--data", required=True, metavar="DIR", help="ImageFolder root, or the flat val folder")
    p.add_argument("--labels", metavar="FILE", help="'filename label' file for a flat folder (ImageNet val layout)")
    add_model_args(p)
    p.add_argument("--batch-size", type=int, default=64, help="(default: %(default)s)")
    p.add_argument("--workers", type=int, default=4, help="data-loading processes (default: %(default)s)")
    p.add_argument("--amp", action="store_true", help="autocast: float16 on CUDA, bfloat16 on CPU")
    p.add_argument("--channels-last", action="store_true", help="NHWC memory format for model and inputs")
    p.add_argument("--out", metavar="JSON", help="write the result (accuracy, resolution, crop, speed) here")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..evaluate import EvalConfig, evaluate
    from .predict import model_from_args

    run_cfg = EvalConfig(
        batch_size=args.batch_size, workers=args.workers, device=args.device, amp=args.amp,
        channels_last=args.channels_last, progress=not args.no_progress,
    )
    model, cfg = model_from_args(args)
    result = evaluate(model, args.data, cfg, run_cfg, label_file=args.labels)
    record = {"model": args.model, "weights": model.pretrained_cfg.get("weights"), "data": str(args.data),
              "test_res": args.test_res, **result.to_dict()}
    print(f"{args.model}: {result.summary()}")
    if args.out:
        Path(args.out).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.out}")
    return 0
