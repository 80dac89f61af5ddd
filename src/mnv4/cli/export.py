"""``mnv4 export``: a deployed (BN-folded) model to ONNX, LiteRT, Core ML, ExecuTorch or AOTInductor, optionally int8,
checked before it is written (``mnv4.export.pipeline``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..engine.config import Range
from ..export.quantize import ORT_INT8_WEIGHTS
from ..export.registry import FORMATS
from ._common import (
    BATCH,
    OPSET,
    SCORE,
    SIZE,
    TOLERANCE,
    add_model_option,
    add_weights_args,
    check_input_file,
    load_model,
    number,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export to ONNX / LiteRT / Core ML / ExecuTorch / AOTInductor (fp32, fp16, int8), checked",
        description="Fold BatchNorm and layer scale (mnv4.deploy), export, then check the file before writing it to "
        "--out: fp32/fp16 files against PyTorch on random inputs (max |diff| relative to the output scale), int8 "
        "files on real images (top-1 agreement with fp32 PyTorch and logit SQNR). A file that fails its check is "
        "not written (exit 1). Core ML predictions need macOS; elsewhere the program's structure is checked. "
        "Without --weights the tag's released weights are exported (from the Hugging Face hub cache).",
    )
    add_model_option(p, "variant or variant.tag (see `mnv4 models`)", positional=True)
    add_format_args(p)
    add_weights_args(p, random_weights=True)
    p.add_argument("--num-classes", type=number(int, Range(1)), default=None,
                   help="classifier size (default: the weights')")
    p.add_argument("--size", type=SIZE, nargs=2, metavar=("H", "W"), default=None, help="input size (default native)")
    p.add_argument("--fp16", action="store_true", help="fp16 weights (tflite, coreml); Core ML is fp16 unless --fp32")
    p.add_argument("--fp32", action="store_true", help="Core ML: fp32 compute precision instead of fp16")
    p.add_argument("--int8", action="store_true",
                   help="int8 post-training quantization (onnx, tflite, executorch); needs --calib")
    p.add_argument("--calib", type=Path, default=None, help="folder of calibration images (ImageFolder or flat)")
    p.add_argument("--calib-images", type=BATCH, default=256, help="how many calibration images to use (default 256)")
    p.add_argument("--eval", type=Path, default=None, metavar="DIR",
                   help="labelled ImageFolder: also report top-1 of PyTorch fp32 vs the exported file (and judge "
                   "int8 files on these images instead of calibration images)")
    p.add_argument("--opset", type=OPSET, default=18, help="ONNX opset (>= 17)")
    p.add_argument("--dynamic-hw", action="store_true", help="ONNX: symbolic height/width (batch is always dynamic)")
    p.add_argument("--exporter", choices=("torchscript", "dynamo"), default="torchscript", help="ONNX exporter")
    p.add_argument("--ort-int8-weights", choices=tuple(ORT_INT8_WEIGHTS), default=None,
                   help="ONNX --int8: the weights ONNX Runtime's int8 kernels take. u8 (default): 8-bit u8 weights "
                   "(U8U8 kernels), accurate on every CPU, x86 without VNNI (AVX2, AVX-512 without VNNI) included; "
                   "s8-7bit: 7-bit s8 weights (U8S8 kernels), ~30%% faster on x86 without VNNI for ~1-3 points of "
                   "top-1 (docs/deploy.md, \"ONNX Runtime int8\")")
    p.add_argument("--tolerance", type=TOLERANCE, default=None,
                   help="fp32/fp16: max relative difference accepted (default 1e-3 fp32, 3e-2 fp16)")
    p.add_argument("--min-agreement", type=SCORE, default=None,
                   help="int8: min fraction of images whose top-1 matches fp32 PyTorch (default 0.9)")
    p.add_argument("--min-sqnr", type=number(float), default=None, metavar="DB",
                   help="int8: min signal-to-quantization-noise ratio of the logits in dB (default 13)")
    p.set_defaults(func=run)


def add_format_args(p: argparse.ArgumentParser, out_help: str | None = None) -> None:
    """--format and --out, from the format registry (``mnv4 export`` and ``mnv4 detect export``)."""
    names = ", ".join(f"{fmt.name} ({fmt.label}, {fmt.suffix})" for fmt in FORMATS.values())
    suffixes = " / ".join(fmt.suffix for fmt in FORMATS.values())
    p.add_argument("--format", choices=tuple(FORMATS), default=None,
                   help=f"{names}; default: the format --out's suffix names")
    p.add_argument("--out", type=Path, required=True, help=out_help or f"output file ({suffixes})")


def precision_from_args(args: argparse.Namespace) -> str:
    """--int8 / --fp16 / --fp32 -> one precision; without one, the format's default (Core ML: fp16, what the Neural
    Engine runs)."""
    from ..errors import UserError
    from ..export.registry import export_format

    fmt = export_format(args.format, args.out)
    chosen = [flag for flag in ("int8", "fp16", "fp32") if getattr(args, flag)]
    if len(chosen) > 1:
        raise UserError(f"choose one of --{' and --'.join(chosen)}")
    if args.fp32 and fmt.default_precision == "fp32":
        takers = " / ".join(f.name for f in FORMATS.values() if f.default_precision != "fp32")
        raise UserError(f"--fp32 only applies to --format {takers} (the other formats are fp32 by default)")
    return chosen[0] if chosen else fmt.default_precision


def config_from_args(args: argparse.Namespace):
    from ..errors import UserError
    from ..export.pipeline import ExportConfig

    check_input_file(args.weights, "--weights")
    for flag, path in (("--calib", args.calib), ("--eval", args.eval)):
        if path is not None and not path.exists():
            raise UserError(f"{flag} {path} does not exist")
    return ExportConfig(
        format=args.format, out=args.out, input_size=tuple(args.size) if args.size else None,
        precision=precision_from_args(args), calib=args.calib, calib_images=args.calib_images, eval_dir=args.eval,
        opset=args.opset, dynamic_hw=args.dynamic_hw, exporter=args.exporter,
        ort_int8_weights=args.ort_int8_weights, tolerance=args.tolerance,
        min_agreement=args.min_agreement, min_sqnr_db=args.min_sqnr, enforce_int8_check=not args.random_weights,
    ).validate()


def run(args: argparse.Namespace) -> int:
    from ..export.pipeline import run_export

    cfg = config_from_args(args)
    kwargs = {} if args.num_classes is None else {"num_classes": args.num_classes}
    model = load_model(args, **kwargs).eval()
    size = cfg.input_size or (model.spec.resolution, model.spec.resolution)
    what = f"{cfg.format} {cfg.precision}"
    print(f"exporting {model.spec.name} at {size[0]}x{size[1]} to {what} -> {cfg.out}", flush=True)
    result = run_export(model, cfg)
    rows = []
    if result.accuracy:
        reference, exported = result.accuracy
        rows = [reference.row(), exported.row(),
                f"top-1 delta vs PyTorch fp32: {100 * (exported.top1 - reference.top1):+.2f} points"]
    if not report_export(result, cfg, "mnv4 export", rows):
        return 1
    print(f"wrote {result.path}")
    return 0


def report_export(result, cfg, prog: str, rows: list[str] = ()) -> bool:
    """What every export command prints after ``run_export``: the pipeline's notes, the check's summary and any
    extra ``rows``; when the check failed, one error line saying nothing was written (False)."""
    for note in result.notes:
        print(note)
    if result.check is not None:
        print(result.check.summary())
    for row in rows:
        print(row)
    if result.ok:
        return True
    hint = " (lower --min-agreement / --min-sqnr to accept it)" if cfg.precision == "int8" else ""
    print(f"{prog}: error: {result.check.summary()}; nothing was written to {cfg.out}{hint}", file=sys.stderr)
    return False
