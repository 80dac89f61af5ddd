"""``mnv4 export``: a deployed (BN-folded) model to ONNX, LiteRT or Core ML, optionally int8, verified numerically."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..specs import MIN_INPUT_SIZE

FORMATS = ("onnx", "tflite", "coreml")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export to ONNX / LiteRT / Core ML (fp32, fp16, int8) and verify the file",
        description="Fold BatchNorm and layer scale (mnv4.deploy), export, then run the exported file on random "
        "inputs and compare with PyTorch: prints max |diff| relative to the output scale and fails (exit 1) beyond "
        "tolerance. Core ML predictions need macOS; elsewhere the converted program's structure is checked.",
    )
    p.add_argument("model", help="variant name (see `mnv4 models`)")
    p.add_argument("--format", choices=FORMATS, required=True, help="onnx, tflite (LiteRT) or coreml (.mlpackage)")
    p.add_argument("--out", type=Path, required=True, help="output file (.onnx / .tflite / .mlpackage)")
    p.add_argument("--weights", type=Path, default=None, help="weights file (.safetensors, or a timm checkpoint)")
    p.add_argument("--num-classes", type=int, default=None, help="classifier size (default: the weights')")
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), default=None, help="input size (default native)")
    p.add_argument("--fp16", action="store_true", help="fp16 weights (tflite, coreml); Core ML is fp16 unless --fp32")
    p.add_argument("--fp32", action="store_true", help="Core ML: fp32 compute precision instead of fp16")
    p.add_argument("--int8", action="store_true", help="int8 post-training quantization (onnx, tflite); needs --calib")
    p.add_argument("--calib", type=Path, default=None, help="folder of calibration images (ImageFolder or flat)")
    p.add_argument("--calib-images", type=int, default=256, help="how many calibration images to use (default 256)")
    p.add_argument("--eval", type=Path, default=None, metavar="DIR",
                   help="labelled ImageFolder: also report top-1 of PyTorch fp32 vs the exported file")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (>= 17)")
    p.add_argument("--dynamic-hw", action="store_true", help="ONNX: symbolic height/width (batch is always dynamic)")
    p.add_argument("--exporter", choices=("torchscript", "dynamo"), default="torchscript", help="ONNX exporter")
    p.add_argument("--tolerance", type=float, default=None, help="max relative difference accepted")
    p.set_defaults(func=run)


def check_args(args: argparse.Namespace) -> tuple[int, int] | None:
    if args.int8 and args.calib is None:
        raise ValueError("--int8 needs --calib DIR (a folder of representative images to calibrate on)")
    if args.calib is not None and not args.int8:
        raise ValueError("--calib only applies with --int8")
    if args.int8 and args.format == "coreml":
        raise ValueError("--int8 is for onnx and tflite; for Core ML use --fp16 (the default) or --fp32")
    if args.int8 and args.fp16:
        raise ValueError("choose one of --int8 and --fp16")
    if args.fp16 and args.format == "onnx":
        raise ValueError("--fp16 is for tflite and coreml; ONNX exports fp32 (or --int8)")
    if args.fp32 and args.format != "coreml":
        raise ValueError("--fp32 only applies to --format coreml (the other formats are fp32 by default)")
    if args.fp32 and args.fp16:
        raise ValueError("choose one of --fp16 and --fp32")
    if args.size is not None and min(args.size) < MIN_INPUT_SIZE:
        raise ValueError(f"--size must be >= {MIN_INPUT_SIZE} in both dimensions, got {args.size[0]} {args.size[1]}")
    if args.calib_images < 1:
        raise ValueError(f"--calib-images must be >= 1, got {args.calib_images}")
    suffix = {"onnx": ".onnx", "tflite": ".tflite", "coreml": ".mlpackage"}[args.format]
    if args.out.suffix != suffix:
        raise ValueError(f"--out for --format {args.format} must end in {suffix}, got {args.out}")
    for flag, path in (("--weights", args.weights), ("--calib", args.calib), ("--eval", args.eval)):
        if path is not None and not path.exists():
            raise FileNotFoundError(f"{flag} {path} does not exist")
    return tuple(args.size) if args.size else None


def load_model(name: str, weights: Path | None, num_classes: int | None):
    """``mnv4.create_model(name, pretrained=weights)`` (random init without weights)."""
    import mnv4

    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    if weights is None:
        print("note: no --weights given, exporting randomly initialised weights", file=sys.stderr)
        return mnv4.create_model(name, **kwargs)
    return mnv4.create_model(name, pretrained=weights, **kwargs)


def run(args: argparse.Namespace) -> int:
    size = check_args(args)
    model = load_model(args.model, args.weights, args.num_classes).eval()
    size = size or (model.spec.resolution, model.spec.resolution)
    print(f"exporting {model.spec.name} at {size[0]}x{size[1]} to {args.format} -> {args.out}")
    if args.format == "onnx":
        check, runner = _export_onnx(model, size, args)
    elif args.format == "tflite":
        check, runner = _export_tflite(model, size, args)
    else:
        check, runner = _export_coreml(model, size, args)
    if check is not None:
        print(check.summary())
    if args.eval is not None and runner is not None:
        _report_accuracy(model, runner, size, args)
    if check is not None and not check.ok:
        print(f"mnv4 export: error: {check.summary()}; the exported file does not match PyTorch", file=sys.stderr)
        return 1
    print(f"wrote {args.out}")
    return 0


def _export_onnx(model, size, args):
    from ..export.onnx import export_onnx, onnx_session, run_session, verify_onnx
    from ..export.quantize import quantize_onnx
    from ..export.verify import FP32_TOLERANCE, INT8_TOLERANCE

    out = args.out
    fp32_path = out.with_name(out.stem + ".fp32.onnx") if args.int8 else out
    export_onnx(model, fp32_path, input_size=size, opset=args.opset, dynamic_hw=args.dynamic_hw,
                exporter=args.exporter)
    if args.int8:
        from ..export.data import Preprocess

        report = quantize_onnx(fp32_path, out, args.calib, input_size=size, num_images=args.calib_images,
                               preprocess=Preprocess.for_model(model, size))
        print(report.summary() + f" (fp32 export kept at {fp32_path})")
    tol = args.tolerance or (INT8_TOLERANCE if args.int8 else FP32_TOLERANCE)
    inputs = _calibration_inputs(model, size, args) if args.int8 else None
    check = verify_onnx(model, out, input_size=size, tolerance=tol, inputs=inputs)
    session = onnx_session(out)
    return check, lambda x: run_session(session, x)[0]


def _export_tflite(model, size, args):
    from ..export.litert import LiteRTRunner, export_litert, verify_litert
    from ..export.verify import INT8_TOLERANCE

    if args.int8:
        from ..export.data import Preprocess
        from ..export.quantize import export_litert_int8

        report = export_litert_int8(model, args.out, args.calib, input_size=size, num_images=args.calib_images,
                                    preprocess=Preprocess.for_model(model, size))
        print(report.summary())
        check = verify_litert(model, args.out, tolerance=args.tolerance or INT8_TOLERANCE,
                              inputs=_calibration_inputs(model, size, args))
    else:
        export_litert(model, args.out, input_size=size, fp16=args.fp16)
        check = verify_litert(model, args.out, tolerance=args.tolerance, fp16=args.fp16)
    runner = LiteRTRunner(args.out)
    return check, lambda x: runner(x)[0]


def _calibration_inputs(model, size, args, count: int = 8):
    """int8 files are checked on real images (a sample of --calib), one per input: random noise would sit far
    outside the calibrated activation ranges and say nothing about the quantized model."""
    import torch

    from ..export.data import Preprocess, calibration_images, load_batch

    paths = calibration_images(args.calib, count, seed=1)
    batch = torch.from_numpy(load_batch(paths, Preprocess.for_model(model, size)))
    return [b[None] for b in batch]


def _export_coreml(model, size, args):
    from ..export.coreml import can_run_coreml, export_coreml, inspect_coreml, verify_coreml

    fp16 = not args.fp32
    export_coreml(model, args.out, input_size=size, fp16=fp16)
    summary = inspect_coreml(args.out)
    print(summary.summary())
    if summary.unknown_ops:
        raise RuntimeError(f"the Core ML program uses ops outside the ML Program op set: {summary.unknown_ops}")
    if not can_run_coreml():
        print("note: Core ML predictions need macOS; structural check only on this OS")
        return None, None
    return verify_coreml(model, args.out, fp16=fp16), None


def _report_accuracy(model, runner, size, args) -> None:
    import os

    from ..deploy import deploy
    from ..export.data import Preprocess
    from ..export.quantize import AccuracyReport, top1_accuracy, torch_runner

    preprocess = Preprocess.for_model(model, size)
    acc_ref, n = top1_accuracy(torch_runner(deploy(model)), args.eval, preprocess, batch_size=16)
    acc, _ = top1_accuracy(runner, args.eval, preprocess)
    size_bytes = os.path.getsize(args.out) if args.out.is_file() else None
    print(AccuracyReport("PyTorch fp32", acc_ref, n).row())
    print(AccuracyReport(args.out.name, acc, n, size_bytes).row())
    print(f"top-1 delta vs PyTorch fp32: {100 * (acc - acc_ref):+.2f} points")
