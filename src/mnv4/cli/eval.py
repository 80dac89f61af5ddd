"""``mnv4 eval --data DIR --model TAG``: ImageNet-protocol top-1 / top-5 on an image folder."""

from __future__ import annotations

import argparse
import json
import sys

from ._common import BATCH, COUNT, add_model_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="top-1 / top-5 and images/s on an ImageFolder or the ImageNet val layout",
        description="Evaluate a MobileNetV4 with the ImageNet protocol (resize to size / crop_pct, bicubic, "
        "centre crop, normalise; the tag's own values). DIR is an ImageFolder (DIR/<class>/<image>) or, with "
        "--labels, a flat folder plus a text file of 'filename label' lines (0-based class index). For a "
        "1000-class model, ImageNet synset folders (n01440764, ...) get their ImageNet indices, also a subset of "
        "them; otherwise the sorted folders are the model's classes 0..k-1 when there are as many as outputs, and "
        "anything ambiguous is refused (see --classes). Images that cannot be decoded are skipped and listed "
        "(--strict stops instead). The resolution and crop are printed next to the accuracy.",
    )
    p.add_argument("--data", required=True, metavar="DIR", help="ImageFolder root, or the flat val folder")
    p.add_argument("--labels", metavar="FILE", help="'filename label' file for a flat folder (ImageNet val layout)")
    p.add_argument("--classes", metavar="FILE", help="the model's class names in output order, one per line: "
                   "class folders are matched to outputs by name")
    add_model_args(p)
    p.add_argument("--batch-size", type=BATCH, default=64, help="(default: %(default)s)")
    p.add_argument("--workers", type=COUNT, default=4, help="data-loading processes (default: %(default)s)")
    p.add_argument("--amp", action="store_true", help="autocast: float16 on CUDA, bfloat16 on CPU")
    p.add_argument("--channels-last", action="store_true", help="NHWC memory format for model and inputs")
    p.add_argument("--strict", action="store_true", help="stop at the first image that cannot be decoded "
                   "(default: skip it, report it and score the rest)")
    p.add_argument("--out", metavar="JSON", help="write the result (accuracy, resolution, crop, speed, skipped "
                   "files) here")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..engine.outputs import check_output_file, write_text_file
    from ..errors import UserError
    from ..evaluate import EvalConfig, evaluate
    from ..images import scan_images
    from ._common import model_from_args, read_lines

    # Every input and the output are checked before the model is loaded and the evaluation runs.
    run_cfg = EvalConfig(
        batch_size=args.batch_size, workers=args.workers, device=args.device, amp=args.amp,
        channels_last=args.channels_last, progress=not args.no_progress, strict=args.strict,
    )
    if args.classes and args.labels:
        raise UserError("--classes matches class folders by name; with --labels the label file's indices are used")
    out = check_output_file(args.out) if args.out else None
    images = scan_images(args.data, args.labels)
    class_names = read_lines(args.classes, "--classes") if args.classes else None
    model, cfg = model_from_args(args)
    result = evaluate(model, images, cfg, run_cfg, class_names=class_names)
    record = {"model": args.model, "weights": model.pretrained_cfg.get("weights"), "data": str(args.data),
              "test_res": args.test_res, **result.to_dict()}
    print(f"{args.model}: {result.summary()}")
    if out is not None:
        write_text_file(out, json.dumps(record, indent=2) + "\n")
        print(f"wrote {out}")
    if result.nonfinite:
        print(f"mnv4 eval: error: {result.nonfinite} of {result.images} images gave NaN/inf logits; the accuracy "
              "counts them as wrong and is not a measure of the weights", file=sys.stderr)
        return 1
    return 0
