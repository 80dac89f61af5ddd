"""``mnv4 predict IMAGE...``: top-k ImageNet labels and probabilities for image files."""

from __future__ import annotations

import argparse
import json
import sys

from ._common import BATCH, add_model_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="top-k labels and probabilities for images",
        description="Classify image files with a pretrained MobileNetV4 and print the top-k labels with their "
        "probabilities. Greyscale, CMYK, palette, 16-bit and EXIF-rotated images are handled; transparent images "
        "are composited on white. A file that cannot be used (missing, corrupt, not an image, too large to decode "
        "safely) gets one error line and the others still run (exit code 1 at the end).",
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    add_model_args(p)
    p.add_argument("--topk", type=BATCH, default=5, help="how many classes to print per image (default: %(default)s)")
    p.add_argument("--labels", metavar="FILE", help="class names, one per line, for a model of your own classes")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..predict import predict
    from ._common import model_from_args, read_lines

    labels = read_lines(args.labels, "--labels") if args.labels else None
    model, cfg = model_from_args(args)
    results = predict(model, args.images, topk=args.topk, cfg=cfg, device=args.device, labels=labels)
    weights = model.pretrained_cfg.get("weights")
    if args.json:
        print(json.dumps({"model": args.model, "weights": weights, "preprocessing": cfg.describe(),
                          "results": [vars(r) for r in results]}, indent=2))
    else:
        print(f"model {args.model} ({weights}); preprocessing {cfg.describe()}")
        answered = [r for r in results if r.ok]  # a failed file has no labels either way: it says nothing
        if answered and answered[0].labels is None:
            print(f"no class names for a {model.num_classes}-class model: printing class indices")
        for r in results:
            if not r.ok:
                continue
            print(r.path)
            for rank, (i, prob) in enumerate(zip(r.indices, r.probs, strict=True)):
                name = f"{r.labels[rank]} ({i})" if r.labels is not None else f"class {i}"
                print(f"  {100 * prob:6.2f}%  {name}")
    failed = [r for r in results if not r.ok]
    for r in failed:
        print(f"mnv4 predict: error: {r.error}", file=sys.stderr)
    return 1 if failed else 0
