"""``mnv4 detect train | eval | predict | export | models``: object detection with a MobileNetV4 backbone; a thin
shell over ``mnv4.detection`` (docs/detection.md)."""

from __future__ import annotations

import argparse
import json
import sys

from ..detection.config import DetectConfig
from ._common import (
    BATCH,
    COUNT,
    OPSET,
    SCORE,
    TOLERANCE,
    Flag,
    add_flag_table,
    flag_values,
    log_to_stderr,
    run_command,
    run_flags,
)
from .export import add_format_args, report_export

TRAIN_FLAGS: list[Flag] = [
    Flag("--arch", "arch", "retinanet (the paper's, 384 px) or ssdlite (torchvision's SSDLite design, 320 px)"),
    Flag("--model", "backbone", "the MobileNetV4 backbone: variant, variant.tag or spec file (mnv4 models)",
         aliases=("--backbone",)),
    *run_flags("pretrained", pretrained="backbone weights: 'true' (the tag's ImageNet weights) or a weights file"),
    Flag("--train-annotations", "train_annotations", "COCO instances JSON of the training set"),
    Flag("--train-images", "train_images", "folder the training JSON's file_name entries are relative to"),
    Flag("--val-annotations", "val_annotations", "COCO instances JSON of the validation set (COCO AP per epoch)"),
    Flag("--val-images", "val_images", "folder of the validation images (with --val-annotations)"),
    *run_flags("out", "image_size", image_size="input size (default 384 RetinaNet, 320 SSDLite)"),
    Flag("--fpn-channels", "fpn_channels", "RetinaNet FPN / head width (paper: 256)"),
    Flag("--trainable-stages", "trainable_stages", "train only the last N backbone stages (stem, blocks.0-4)"),
    *run_flags("drop_path", "epochs", "global_batch", "batch_size", "max_steps",
               drop_path="backbone stochastic depth (paper: 0.2)"),
    Flag("--optimizer", "optimizer", "adam (L2), adamw (decoupled) or sgd"),
    *run_flags("lr", "weight_decay", "warmup_epochs", "ema_decay",
               weight_decay="weight decay (L2 for adam/sgd; not on BN/biases)"),
    Flag("--augment", "augment", "paper (flip + scale jitter + RandAugment), ssd or none"),
    Flag("--eval-every", "eval_every", "validate every N epochs (0: only after the last)"),
    *run_flags("device", "precision", "workers", "seed", "threads", "resume", "save_every_steps", "log_every"),
    Flag("--frozen-bn", "frozen_bn", "freeze every backbone BatchNorm (small batches)"),
    *run_flags("sync_bn", "progress", "tensorboard"),
]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "detect",
        help="object detection: RetinaNet / SSDLite with a MobileNetV4 backbone on COCO-format data",
        description="Detectors from torchvision with a MobileNetV4 backbone: train on COCO-format data (instances "
        "JSON + image folder), COCO AP with pycocotools, draw predictions, export to ONNX.",
    )
    detect_sub = p.add_subparsers(dest="detect_command", metavar="ACTION", required=True)

    t = detect_sub.add_parser("train", help="train a detector (several GPUs: torchrun ... -m mnv4.detection train)",
                              description="Train on COCO-format data from a recipe (--list-recipes); flags override "
                              "it. Multi-GPU: torchrun --nproc-per-node N -m mnv4.detection train <same flags>.")
    t.add_argument("--recipe", default=None, help="a shipped detection recipe or a .toml file")
    t.add_argument("--list-recipes", action="store_true", help="print the shipped recipes and exit")
    add_flag_table(t, TRAIN_FLAGS, DetectConfig, "scale_max=1.5")
    t.set_defaults(func=run_train)

    e = detect_sub.add_parser("eval", help="COCO AP of a trained detector on a COCO-format set",
                              description="Print pycocotools' COCO box AP table (AP, AP50, AP75, APs/m/l, AR).")
    add_weights_arg(e)
    e.add_argument("--annotations", required=True, help="COCO instances JSON")
    e.add_argument("--images", required=True, help="folder the JSON's file_name entries are relative to")
    e.add_argument("--batch-size", type=BATCH, default=8, help="images per forward (default: %(default)s)")
    e.add_argument("--workers", type=COUNT, default=2, help="data-loader workers (default: %(default)s)")
    e.add_argument("--score-thresh", type=SCORE, default=None, help="override the detector's score threshold")
    e.add_argument("--json", action="store_true", help="print the metrics as JSON after the table")
    e.set_defaults(func=run_eval)

    r = detect_sub.add_parser("predict", help="detect objects in images; write drawn images and JSON",
                              description="Writes OUT/<name>.png|jpg with boxes and labels drawn and OUT/<name>.json "
                              "per image. An unreadable image gets one error line; the others still run (exit 1).")
    r.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    add_weights_arg(r)
    r.add_argument("--out", default="detections", help="output folder (default: %(default)s)")
    r.add_argument("--score-thresh", type=SCORE, default=0.3, help="keep detections scoring at least this "
                   "(default: %(default)s)")
    r.set_defaults(func=run_predict)

    x = detect_sub.add_parser(
        "export", help="export a detector to ONNX (NMS inside), checked against PyTorch before it is written",
        description="Write the whole detector (resize, normalisation, network, box decoding, NMS) to --out, through "
        "the pipeline of mnv4 export: the format from --format or --out's suffix, --out checked before any work, "
        "the file written under a temporary name and moved into place only after its check passes (a file that "
        "fails it is not written, exit 1). Only ONNX can hold the post-processing (docs/detection.md).")
    add_weights_arg(x)
    add_format_args(x, out_help="output file (.onnx)")
    x.add_argument("--verify-images", nargs="+", metavar="IMAGE", default=None,
                   help="images to compare the exported file with PyTorch on (default: no comparison, a warning)")
    x.add_argument("--opset", type=OPSET, default=18, help="ONNX opset (default: %(default)s)")
    x.add_argument("--tolerance", type=TOLERANCE, default=None,
                   help="max relative difference of boxes and scores accepted (default 1e-3)")
    x.set_defaults(func=run_export)

    m = detect_sub.add_parser("models", help="params and MACs of the detectors next to the paper's Tab. 7")
    m.add_argument("--backbones", nargs="+", default=["mobilenetv4_conv_medium", "mobilenetv4_hybrid_medium"],
                   help="backbones of the paper's RetinaNet to count (default: the two of Tab. 7)")
    m.add_argument("--json", action="store_true", help="print JSON")
    m.set_defaults(func=run_models)


def add_weights_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", required=True, metavar="FILE",
                   help="a detector's model.safetensors (from mnv4 detect train or mnv4.detection.save_detector)")
    p.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")


def detect_config_from_args(args: argparse.Namespace) -> DetectConfig:
    from ..detection.config import load_detect_config

    return load_detect_config(args.recipe, **flag_values(args, TRAIN_FLAGS, DetectConfig))


def run_train(args: argparse.Namespace) -> int:
    from ..detection import list_detect_recipes, train_detector

    if args.list_recipes:
        print("\n".join(list_detect_recipes()))
        return 0
    log_to_stderr(timestamps=True)
    result = train_detector(detect_config_from_args(args))
    summary = ", ".join(f"{k} {v:.4g}" for k, v in result.final.items() if isinstance(v, float))
    print(f"done: {result.global_step} steps; {summary}; weights: {result.weights}")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from ..detection import evaluate_detector, load_coco, load_detector

    log_to_stderr()
    options = {} if args.score_thresh is None else {"score_thresh": args.score_thresh}
    model, spec = load_detector(args.weights, **options)
    coco = load_coco(args.annotations, args.images)
    ours, theirs = ([(c["id"], str(c["name"])) for c in cats] for cats in (spec.categories, coco.categories))
    if ours != theirs:  # the label map: ids alone would score "cat" boxes as "dog" where a file swaps the names
        from ..errors import UserError

        differ = next((a, b) for a, b in zip([*ours, None], [*theirs, None], strict=False) if a != b)
        raise UserError(f"{args.annotations} has other categories than the detector was trained on (first "
                        f"difference: {differ[1]} in the file, {differ[0]} in the detector; id, name); they must "
                        "match")
    metrics = evaluate_detector(model.to(args.device), coco, args.device, args.batch_size, args.workers)
    print(f"{spec.arch} / {spec.backbone} on {args.annotations}: {metrics.num_images} images, "
          f"{metrics.num_detections} detections")
    print(metrics.table)
    if args.json:
        print(json.dumps(metrics.stats, indent=2))
    return 0


def run_predict(args: argparse.Namespace) -> int:
    from ..detection import detect, load_detector, write_predictions
    from ..engine.outputs import check_output_folder

    check_output_folder(args.out)  # before the model is loaded and any image is read
    log_to_stderr()
    model, spec = load_detector(args.weights, score_thresh=args.score_thresh)
    results = detect(model, spec, args.images, args.score_thresh, args.device)
    write_predictions(results, args.out)
    for r in results:
        if r.ok:
            found = ", ".join(f"{n} {s:.2f}" for n, s in zip(r.names, r.scores, strict=True)) or "nothing"
            print(f"{r.path}: {found}")
    failed = [r for r in results if not r.ok]
    for r in failed:
        print(f"mnv4 detect: error: {r.error}", file=sys.stderr)
    print(f"wrote {len(results) - len(failed)} drawn images and JSON files to {args.out}")
    return 1 if failed else 0


def run_export(args: argparse.Namespace) -> int:
    from ..detection import load_detector
    from ..detection.augment import eval_transform
    from ..detection.export import Detector, graph_op_types
    from ..export.pipeline import ExportConfig, run_export
    from ..images import load_image
    from ._common import check_input_file

    check_input_file(args.weights, "--weights")
    images = [eval_transform()(load_image(p)) for p in args.verify_images or []]  # unreadable: one line, no work
    cfg = ExportConfig(format=args.format, out=args.out, opset=args.opset, tolerance=args.tolerance)
    cfg = cfg.validate(Detector(images))
    model, spec = load_detector(args.weights)
    print(f"exporting {spec.arch} / {spec.backbone} (traced at {spec.size} px) to {cfg.format} -> {cfg.out}",
          flush=True)
    result = run_export(model, cfg, Detector(images, spec.size))
    if not report_export(result, cfg, "mnv4 detect"):
        return 1
    nms = "NonMaxSuppression" in graph_op_types(result.path)
    print(f"wrote {result.path} (input image (1,3,H,W) in [0,1]; outputs boxes/scores/labels; NMS inside the graph: "
          f"{'yes' if nms else 'no'})")
    if result.check is None:
        print("not verified: pass --verify-images with a few pictures to compare the exported file with PyTorch",
              file=sys.stderr)
    return 0


def run_models(args: argparse.Namespace) -> int:
    from ..detection.summary import paper_table

    rows = paper_table(args.backbones)
    if args.json:
        print(json.dumps([vars(r) for r in rows], indent=2))
        return 0
    print(f"{'detector':36s} {'input':>5s} {'params (M)':>10s} {'+1280 conv':>10s} {'paper':>6s} {'GMACs':>6s} "
          f"{'paper':>6s}")
    for r in rows:
        paper_p = f"{r.paper_params_m:.2f}" if r.paper_params_m else "-"
        paper_m = f"{r.paper_gmacs:.2f}" if r.paper_gmacs else "-"
        print(f"{r.name:36s} {r.size:5d} {r.params / 1e6:10.2f} {(r.params + r.classifier_head_conv) / 1e6:10.2f} "
              f"{paper_p:>6s} {r.macs / 1e9:6.2f} {paper_m:>6s}")
    print("whole detector, 91 COCO classes, one image; MACs count convs and the Mobile MQA matmuls. '+1280 conv': "
          "with the classifier's unused 960->1280 head conv, as the paper's counts seem to be (docs/detection.md)")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m mnv4.detection ACTION ...`` (for torchrun): ``mnv4 detect ACTION ...``."""
    return run_command("detect", "mnv4 detect", argv)
