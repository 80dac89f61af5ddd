"""``mnv4 segment train | eval | predict | export | models``: semantic segmentation with a MobileNetV4 backbone; a thin
shell over ``mnv4.segmentation`` (docs/segmentation.md)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..engine.config import Range
from ..segmentation.config import SegmentConfig
from ._common import (
    BATCH,
    COUNT,
    OPSET,
    SCORE,
    SIZE,
    TOLERANCE,
    Flag,
    add_flag_table,
    flag_values,
    log_to_stderr,
    number,
    run_command,
    run_flags,
)
from .export import add_format_args, report_export

TRAIN_FLAGS: list[Flag] = [
    Flag("--arch", "arch", "lraspp (torchvision's LR-ASPP, the phone-sized head) or deeplabv3 (ASPP)"),
    Flag("--model", "model", "the MobileNetV4 backbone: variant, variant.tag or spec file (mnv4 models)",
         aliases=("--backbone",)),
    *run_flags("pretrained", pretrained="backbone weights: 'true' (the tag's ImageNet weights) or a weights file"),
    Flag("--train-images", "train_images", "folder of the training images (any depth)"),
    Flag("--train-masks", "train_masks", "folder of their PNG label masks, paired by relative name (mask folder)"),
    Flag("--train-split", "train_split", "text file of the names to train on (mask folder; e.g. VOC's train.txt)"),
    Flag("--train-annotations", "train_annotations", "COCO instances JSON of the training images (instead of masks)"),
    Flag("--val-images", "val_images", "folder of the validation images (mIoU after each epoch)"),
    Flag("--val-masks", "val_masks", "their PNG label masks"),
    Flag("--val-split", "val_split", "text file of the validation names (mask folder)"),
    Flag("--val-annotations", "val_annotations", "COCO instances JSON of the validation images"),
    Flag("--num-classes", "num_classes", "mask folders: the number of labels, background included (255 = ignore)"),
    Flag("--class-names", "class_names", "text file of class names, one per line in label order (mask folders)"),
    Flag("--crowd", "crowd", "COCO crowd regions: 'ignore' (255) or 'label' (as torchvision's reference)"),
    *run_flags("out", "image_size", image_size="evaluation size (shorter side) and the base of the training resize "
                                               "(default 512)"),
    Flag("--crop-size", "crop_size", "training crop (default: --image-size)"),
    Flag("--output-stride", "output_stride", "backbone output stride: 8, 16 (default) or 32"),
    Flag("--aux", "aux", "DeepLabV3: add the FCN head on the /8 map and its auxiliary loss"),
    Flag("--aux-weight", "aux_weight", "weight of the auxiliary loss (default 0.5)"),
    *run_flags("drop_path", "epochs", "global_batch", "batch_size", "max_steps",
               epochs="training epochs (the LR schedule follows)"),
    Flag("--optimizer", "optimizer", "sgd (L2, the default), adamw (decoupled) or adam (L2)"),
    Flag("--momentum", "momentum", "SGD momentum"),
    *run_flags("lr", "weight_decay", "warmup_epochs", "ema_decay",
               weight_decay="weight decay (L2 for sgd/adam; not on BN/biases)"),
    Flag("--lr-schedule", "lr_schedule", "poly ((1 - t)^0.9, the default) or cosine"),
    Flag("--scale-min", "scale_min", "random resize: smallest factor of --image-size (default 0.5)"),
    Flag("--scale-max", "scale_max", "random resize: largest factor (default 2.0)"),
    Flag("--eval-every", "eval_every", "validate every N epochs (0: only after the last)"),
    *run_flags("device", "precision", "workers", "seed", "threads", "resume", "save_every_steps", "keep_last",
               "log_every", "sync_bn", "deterministic", "progress", "tensorboard",
               precision="fp32, bf16 or fp16 (autocast); default: bf16 on CUDA, fp32 on the CPU"),
]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "segment",
        help="semantic segmentation: LR-ASPP / DeepLabV3 with a MobileNetV4 backbone on mask folders or COCO",
        description="Segmenters from torchvision with a MobileNetV4 backbone: train on images + PNG label masks or "
        "COCO instances, mIoU, coloured overlays and raw masks, export for phones checked against PyTorch, params and "
        "MACs (docs/segmentation.md).",
    )
    seg_sub = p.add_subparsers(dest="segment_command", metavar="ACTION", required=True)

    t = seg_sub.add_parser("train", help="train a segmenter (several GPUs: torchrun ... -m mnv4.segmentation train)",
                           description="Train on a mask folder (--train-images + --train-masks + --num-classes) or "
                           "COCO (--train-annotations + --train-images), from a recipe (--list-recipes) or the "
                           "defaults; flags override it. Multi-GPU: torchrun --nproc-per-node N -m "
                           "mnv4.segmentation train <same flags>.")
    t.add_argument("--recipe", default=None, help="a shipped segmentation recipe or a .toml file")
    t.add_argument("--list-recipes", action="store_true", help="print the shipped recipes and exit")
    add_flag_table(t, TRAIN_FLAGS, SegmentConfig, "hflip=false --set categories=[1,3]")
    t.set_defaults(func=run_train)

    e = seg_sub.add_parser("eval", help="mIoU, per-class IoU and pixel accuracy of a trained segmenter",
                           description="Score a segmenter on a mask folder (--images + --masks) or COCO "
                           "(--annotations + --images): each image resized as in training's validation, the logits "
                           "upsampled to the image's own size, scored against the untouched mask.")
    add_weights_arg(e)
    e.add_argument("--images", required=True, help="folder of the images")
    e.add_argument("--masks", default=None, help="folder of their PNG label masks (mask folder)")
    e.add_argument("--split", default=None, help="text file of the names to score (mask folder)")
    e.add_argument("--annotations", default=None, help="COCO instances JSON (instead of --masks); the categories "
                   "are the segmenter's own")
    e.add_argument("--crowd", choices=["ignore", "label"], default="ignore",
                   help="COCO crowd regions: ignored or labelled (default: %(default)s)")
    e.add_argument("--batch-size", type=BATCH, default=8, help="images per forward (default: %(default)s)")
    e.add_argument("--workers", type=COUNT, default=2, help="data-loader workers (default: %(default)s)")
    e.add_argument("--no-resize", action="store_true", help="run each image at its own size")
    e.add_argument("--json", action="store_true", help="print the metrics as JSON after the table")
    e.set_defaults(func=run_eval)

    r = seg_sub.add_parser("predict", help="segment images; write raw masks and coloured overlays",
                           description="Writes OUT/<name>_mask.png (the class numbers as a palette PNG) and "
                           "OUT/<name>_overlay.jpg|png per image. An unreadable image gets one error line; the "
                           "others still run (exit 1).")
    r.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    add_weights_arg(r)
    r.add_argument("--out", default="segmentations", help="output folder (default: %(default)s)")
    r.add_argument("--no-resize", action="store_true", help="run each image at its own size")
    r.set_defaults(func=run_predict)

    x = seg_sub.add_parser("export", help="export a segmenter (ONNX, LiteRT, ExecuTorch, ...), checked against PyTorch",
                           description="Write the segmenter's logits at a fixed input size (normalised image "
                           "(N,3,H,W) -> logits (N,K,H,W)) to --out through the pipeline of mnv4 export: the format "
                           "from --format or --out's suffix, --out checked before any work, the file moved into "
                           "place only after its check passes (argmax-mask agreement and logit error vs PyTorch; "
                           "int8: mask agreement and SQNR vs fp32), else nothing is written (exit 1).")
    add_weights_arg(x, device=False)
    add_format_args(x)
    x.add_argument("--size", type=SIZE, nargs=2, metavar=("H", "W"), default=None,
                   help="input size (default: the spec's image_size, square)")
    x.add_argument("--fp16", action="store_true", help="fp16 weights (tflite, coreml)")
    x.add_argument("--fp32", action="store_true", help="Core ML: fp32 compute precision instead of fp16")
    x.add_argument("--int8", action="store_true", help="int8 post-training quantization (onnx, tflite, executorch); "
                   "needs --calib")
    x.add_argument("--calib", type=Path, default=None, help="folder of calibration images (int8)")
    x.add_argument("--calib-images", type=BATCH, default=256, help="calibration images to use (default 256)")
    x.add_argument("--images", type=Path, default=None, metavar="DIR",
                   help="real images to compare the file with PyTorch on (default: --calib for int8, else random "
                   "inputs)")
    x.add_argument("--check-images", type=BATCH, default=32, help="images the check runs on (default 32)")
    x.add_argument("--opset", type=OPSET, default=18, help="ONNX opset (default: %(default)s)")
    x.add_argument("--tolerance", type=TOLERANCE, default=None,
                   help="fp32/fp16: max logit difference relative to their scale (default 1e-3 fp32, 3e-2 fp16)")
    x.add_argument("--min-agreement", type=SCORE, default=None,
                   help="int8: min share of pixels whose class matches fp32 PyTorch (default 0.9)")
    x.add_argument("--min-sqnr", type=number(float), default=None, metavar="DB",
                   help="int8: min signal-to-quantization-noise ratio of the logits in dB (default 13)")
    x.set_defaults(func=run_export)

    m = seg_sub.add_parser("models", help="params and MACs of the segmenters next to torchvision's MobileNetV3 ones",
                           description="Params and MACs of LR-ASPP on Conv-S / Conv-M / ConvMediumSeg / Hybrid-M and "
                           "DeepLabV3 on Conv-M (output stride 16) next to torchvision's MobileNetV3-Large "
                           "segmenters, counted as torchvision counts them (the columns of "
                           "benchmarks/segment_latency.py).")
    m.add_argument("--size", type=SIZE, default=512, help="square input side (default: %(default)s)")
    m.add_argument("--num-classes", type=number(int, Range(2)), default=21,
                   help="classes (default: %(default)s, VOC's)")
    m.add_argument("--json", action="store_true", help="print JSON")
    m.set_defaults(func=run_models)


def add_weights_arg(p: argparse.ArgumentParser, device: bool = True) -> None:
    p.add_argument("--weights", required=True, metavar="FILE",
                   help="a segmenter's model.safetensors (from mnv4 segment train or save_segmenter)")
    if device:  # export traces and checks on the CPU: no --device there
        p.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")


def segment_config_from_args(args: argparse.Namespace) -> SegmentConfig:
    from ..segmentation.config import load_segment_config

    return load_segment_config(args.recipe, **flag_values(args, TRAIN_FLAGS, SegmentConfig))


def run_train(args: argparse.Namespace) -> int:
    from ..segmentation import list_segment_recipes, train_segmenter

    if args.list_recipes:
        print("\n".join(list_segment_recipes()))
        return 0
    log_to_stderr(timestamps=True)
    result = train_segmenter(segment_config_from_args(args))
    summary = ", ".join(f"{k} {v:.4g}" for k, v in result.final.items() if isinstance(v, float))
    print(f"done: {result.global_step} steps; {summary}; weights: {result.weights}")
    return 0


def eval_data(args: argparse.Namespace, spec):
    """The data set ``mnv4 segment eval`` names, read as the segmenter's labels: a mask folder of its classes, or
    COCO with its categories."""
    from ..errors import UserError
    from ..segmentation import load_coco_masks, load_mask_folder

    if bool(args.masks) == bool(args.annotations):
        raise UserError("give the labels: --masks DIR (PNG masks) or --annotations FILE (COCO), one of them")
    if args.masks:
        return load_mask_folder(args.images, args.masks, spec.num_classes, args.split)
    if args.split:
        raise UserError("--split selects pairs of a mask folder; with --annotations the COCO file lists the images")
    data = load_coco_masks(args.annotations, args.images, spec.categories or None, args.crowd)
    if spec.categories and spec.classes and data.class_names[1:] != spec.classes[1:]:
        # the label map is ids and names: ids alone would score a file that names them otherwise as if it matched
        raise UserError(f"{args.annotations} names the segmenter's category ids {spec.categories} "
                        f"{data.class_names[1:]}, the segmenter was trained on {spec.classes[1:]}; they must match")
    return data


def run_eval(args: argparse.Namespace) -> int:
    from ..segmentation import evaluate_segmenter, load_segmenter

    log_to_stderr()
    model, spec = load_segmenter(args.weights)
    data = eval_data(args, spec)
    metrics = evaluate_segmenter(model.to(args.device), data, spec, args.device, args.batch_size, args.workers,
                                 resize=not args.no_resize)
    print(f"{spec.arch} / {spec.backbone} on {data.source}: {len(data)} images")
    print(metrics.table(spec.class_names()))
    if args.json:
        print(json.dumps(metrics.to_dict(), indent=2))
    return 0


def run_predict(args: argparse.Namespace) -> int:
    from ..engine import check_output_folder
    from ..segmentation import load_segmenter, segment, write_predictions

    check_output_folder(args.out)  # before the model is loaded and any image is read
    log_to_stderr()
    model, spec = load_segmenter(args.weights)
    results = segment(model, spec, args.images, args.device, resize=not args.no_resize)
    write_predictions(results, spec, args.out)
    names = spec.class_names()
    for r in results:
        if r.ok:
            shares = ", ".join(f"{name} {share:.2f}" for name, share in r.class_fractions(names).items())
            print(f"{r.path}: {shares}")
    failed = [r for r in results if not r.ok]
    for r in failed:
        print(f"mnv4 segment: error: {r.error}", file=sys.stderr)
    print(f"wrote {len(results) - len(failed)} masks and overlays to {args.out}")
    return 1 if failed else 0


def run_export(args: argparse.Namespace) -> int:
    from ..errors import UserError
    from ..export.pipeline import ExportConfig, run_export
    from ..segmentation import load_segmenter, segmenter_spec
    from ..segmentation.export import Segmenter
    from ._common import check_input_file
    from .export import precision_from_args

    check_input_file(args.weights, "--weights")
    for flag, path in (("--calib", args.calib), ("--images", args.images)):  # by this command's flag names
        if path is not None and not path.is_dir():
            raise UserError(f"{flag} {path} " + ("is not a folder of images" if path.exists() else "does not exist"))
    cfg = ExportConfig(format=args.format, out=args.out, input_size=tuple(args.size) if args.size else None,
                       precision=precision_from_args(args), calib=args.calib, calib_images=args.calib_images,
                       eval_dir=args.images, check_images=args.check_images, opset=args.opset,
                       tolerance=args.tolerance, min_agreement=args.min_agreement, min_sqnr_db=args.min_sqnr)
    spec = segmenter_spec(args.weights)
    kind = Segmenter(spec)
    cfg = cfg.validate(kind)  # before any work: flags, folders, --out
    model, _ = load_segmenter(args.weights)
    size = kind.input_size(model, cfg)
    print(f"exporting {spec.arch} / {spec.backbone} at {size[0]}x{size[1]} to {cfg.format} {cfg.precision} -> "
          f"{cfg.out}", flush=True)
    result = run_export(model, cfg, kind)
    if not report_export(result, cfg, "mnv4 segment"):
        return 1
    print(f"wrote {result.path} (input: normalised image (N,3,{size[0]},{size[1]}), mean {spec.mean}, std "
          f"{spec.std}; output: logits (N,{spec.num_classes},{size[0]},{size[1]}), argmax = the class)")
    if result.check is None:
        print(f"not compared with PyTorch: {cfg.format} files cannot run on this machine", file=sys.stderr)
    return 0


def run_models(args: argparse.Namespace) -> int:
    from ..segmentation.summary import segmenter_table

    rows = segmenter_table(args.size, args.num_classes)
    if args.json:
        print(json.dumps([vars(r) for r in rows], indent=2))
        return 0
    macs_of = {r.name: r.macs for r in rows}
    print(f"{'segmenter':40s} {'params (M)':>10s} {'GMACs':>7s} {'x MNv3':>7s}")
    for r in rows:
        print(f"{r.name:40s} {r.params / 1e6:10.2f} {r.macs / 1e9:7.2f} {r.macs / macs_of[r.reference]:7.2f}")
    print(f"whole segmenter at {args.size}x{args.size}, {args.num_classes} classes, output stride 16, DeepLabV3 "
          "without its aux head; MACs count convs, linears and the Mobile MQA matmuls; 'x MNv3': MACs over "
          "torchvision's MobileNetV3-Large segmenter of the same head")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m mnv4.segmentation ACTION ...`` (for torchrun): ``mnv4 segment ACTION ...``."""
    return run_command("segment", "mnv4 segment", argv)
