"""``mnv4 predict IMAGE...``: top-k ImageNet labels and probabilities for image files."""

from __future__ import annotations

import argparse
import json
import sys

from ..specs import MIN_INPUT_SIZE


def add_model_args(p: argparse.ArgumentParser) -> None:
    """``--model`` / ``--weights`` / preprocessing overrides, shared by ``predict`` and ``eval``."""
    p.add_argument(
        "--model", default="mobilenetv4_conv_small",
        help="variant or variant.tag (see `mnv4 models`, mnv4.list_pretrained()); without --weights the tag's "
        "weights come from the Hugging Face hub cache (a bare variant = its default tag). Default: %(default)s",
    )
    p.add_argument("--weights", metavar="FILE", help="local weights (.safetensors, or .pth/.bin read with "
                   "weights_only=True; timm train.py checkpoints too) instead of the hub")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cuda or cuda:1 (default: %(default)s)")
    p.add_argument("--test-res", action="store_true", help="use the tag's larger test_input_size / test_crop_pct")
    p.add_argument("--img-size", type=int, help="override the input size (square)")
    p.add_argument("--crop-pct", type=float, help="override the centre-crop fraction (resize to size / crop_pct)")


def model_from_args(args: argparse.Namespace):
    """(model, DataConfig) for the parsed ``add_model_args`` options."""
    import logging

    from ..factory import create_model
    from ..transforms import data_config

    log = logging.getLogger("mnv4")  # show mnv4's own messages (e.g. the classifier reset), nobody else's
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("mnv4: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    if args.img_size is not None and args.img_size < MIN_INPUT_SIZE:
        raise ValueError(f"--img-size must be >= {MIN_INPUT_SIZE}, got {args.img_size}")
    if args.crop_pct is not None and not 0 < args.crop_pct <= 1:
        raise ValueError(f"--crop-pct must be in (0, 1], got {args.crop_pct}")
    model = create_model(args.model, pretrained=args.weights or True)
    cfg = data_config(model, use_test_size=args.test_res, img_size=args.img_size, crop_pct=args.crop_pct)
    return model, cfg


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="top-k labels and probabilities for images",
        description="Classify image files with a pretrained MobileNetV4 and print the top-k labels with their "
        "probabilities. Greyscale, CMYK, palette, 16-bit and EXIF-rotated images are handled; transparent images "
        "are composited on white. A file that cannot be read gets one error line and the others still run "
        "(exit code 1 at the end).",
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    add_model_args(p)
    p.add_argument("--topk", type=int, default=5, help="how many classes to print per image (default: %(default)s)")
    p.add_argument("--labels", metavar="FILE", help="class names, one per line, for a model of your own classes")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..predict import predict

    if args.topk < 1:
        raise ValueError(f"--topk must be >= 1, got {args.topk}")
    labels = None
    if args.labels:
        labels = [line for line in Path(args.labels).read_text(encoding="utf-8").splitlines() if line.strip()]
    model, cfg = model_from_args(args)
    results = predict(model, args.images, topk=args.topk, cfg=cfg, device=args.device, labels=labels)
    weights = model.pretrained_cfg.get("weights")
    if args.json:
        print(json.dumps({"model": args.model, "weights": weights, "preprocessing": cfg.describe(),
                          "results": [vars(r) for r in results]}, indent=2))
    else:
        print(f"model {args.model} ({weights}); preprocessing {cfg.describe()}")
        if results and results[0].labels is None and any(r.ok for r in results):
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
