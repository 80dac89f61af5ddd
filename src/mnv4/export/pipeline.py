"""One export as a library call: ``ExportConfig`` says what to write, ``run_export(model, cfg)`` writes and checks it.

The file is written to a temporary name next to ``cfg.out`` and moved into place only when its check passes, so
``cfg.out`` never holds a half-written or unverified file: a failed export or check leaves whatever was at
``cfg.out`` before untouched and no temporary file behind. Intermediate files (the fp32 ONNX file of an int8 export)
live in a temporary folder that is always removed.

Checks: fp32 / fp16 files against PyTorch on random inputs (relative error, ``mnv4.export.verify``); int8 files on
real images (``--eval`` if given, else a sample of the calibration folder) by top-1 agreement and logit SQNR; Core ML
files by their program structure (predictions need macOS).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import UserError
from ..specs import MIN_INPUT_SIZE
from . import SUFFIXES
from .verify import ExportCheck, Int8Check

PRECISIONS = {  # format -> the precisions it exports
    "onnx": ("fp32", "int8"),
    "tflite": ("fp32", "fp16", "int8"),
    "coreml": ("fp32", "fp16"),
    "executorch": ("fp32", "int8"),
    "aoti": ("fp32",),
}


@dataclass(frozen=True)
class ExportConfig:
    """What ``run_export`` writes. Messages name the ``mnv4 export`` flags each field comes from."""

    format: str
    out: Path
    input_size: tuple[int, int] | None = None  # None: the variant's native resolution
    precision: str = "fp32"  # fp32, fp16 (tflite weights, Core ML compute) or int8 (post-training, needs calib)
    calib: Path | None = None  # folder of calibration images (int8)
    calib_images: int = 256
    eval_dir: Path | None = None  # labelled folder: top-1 of PyTorch fp32 and of the file, side by side
    check_images: int = 32  # real images the int8 check runs on
    opset: int = 18
    dynamic_hw: bool = False
    exporter: str = "torchscript"
    tolerance: float | None = None  # fp32/fp16 check; None: the format's default
    min_agreement: float | None = None  # int8 check; None: verify.INT8_MIN_AGREEMENT
    min_sqnr_db: float | None = None  # int8 check; None: verify.INT8_MIN_SQNR_DB
    enforce_int8_check: bool = True  # False for random weights: their near-tied logits flip top-1 under any rounding

    def validate(self) -> ExportConfig:
        if self.format not in SUFFIXES:
            raise UserError(f"unknown format {self.format!r}; choose from {', '.join(SUFFIXES)}")
        allowed = PRECISIONS[self.format]
        if self.precision not in allowed:
            flag = {"fp16": "--fp16", "int8": "--int8", "fp32": "--fp32"}[self.precision]
            raise UserError(f"{flag} is not available for --format {self.format} (it exports {', '.join(allowed)})")
        int8 = self.precision == "int8"
        if int8 and self.calib is None:
            raise UserError("--int8 needs --calib DIR (a folder of representative images to calibrate on)")
        if self.calib is not None and not int8:
            raise UserError("--calib only applies with --int8")
        if int8 and self.tolerance is not None:
            raise UserError("--tolerance is for fp32/fp16 files; an int8 file is judged by --min-agreement and "
                            "--min-sqnr")
        if not int8 and (self.min_agreement is not None or self.min_sqnr_db is not None):
            raise UserError("--min-agreement / --min-sqnr judge int8 files; use --tolerance for fp32/fp16")
        if self.tolerance is not None and self.tolerance < 0:
            raise UserError(f"--tolerance must be >= 0, got {self.tolerance}")
        if self.min_agreement is not None and not 0 <= self.min_agreement <= 1:
            raise UserError(f"--min-agreement must be in [0, 1], got {self.min_agreement}")
        if self.input_size is not None and (len(self.input_size) != 2 or min(self.input_size) < MIN_INPUT_SIZE):
            got = " ".join(map(str, self.input_size))
            raise UserError(f"--size must be >= {MIN_INPUT_SIZE} in both dimensions, got {got}")
        if self.calib_images < 1:
            raise UserError(f"--calib-images must be >= 1, got {self.calib_images}")
        if self.check_images < 1:
            raise UserError(f"the int8 check needs >= 1 image, got {self.check_images}")
        if self.dynamic_hw and self.format != "onnx":
            raise UserError("--dynamic-hw is for --format onnx (the other formats have a fixed input size)")
        for flag, path in (("--calib", self.calib), ("--eval", self.eval_dir)):
            if path is not None and not Path(path).is_dir():
                raise UserError(f"{flag} {path} is not a folder of images")
        check_output_path(Path(self.out), SUFFIXES[self.format], self.format)
        return self


def check_output_path(out: Path, suffix: str, fmt: str) -> None:
    """Refuse, before any work, an output path that cannot be written: wrong suffix, a folder in the way (for a
    file format), a parent that is a file or a folder we may not write to."""
    if out.suffix != suffix:
        raise UserError(f"--out for --format {fmt} must end in {suffix}, got {out}")
    is_dir_format = suffix == ".mlpackage"
    if out.exists() and out.is_dir() != is_dir_format:
        kind = "a folder" if out.is_dir() else "a file"
        raise UserError(f"--out {out} exists and is {kind}; remove it or choose another path")
    parent = out.parent
    while not parent.exists():  # the folders run_export will create; the first existing one must be writable
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"--out {out}: {parent} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(dir=parent, prefix=".mnv4-write-test-")
    except OSError as err:
        raise UserError(f"--out {out}: cannot write in {parent} ({err.strerror or err})") from None
    os.close(fd)
    os.unlink(probe)


@dataclass
class ExportResult:
    """What ``run_export`` did: the file's path (None when its check failed and nothing was written), the check,
    notes for the user, and the ``--eval`` accuracy rows."""

    path: Path | None
    check: ExportCheck | Int8Check | None
    notes: list[str] = field(default_factory=list)
    accuracy: list = field(default_factory=list)  # [AccuracyReport of PyTorch fp32, AccuracyReport of the file]

    @property
    def ok(self) -> bool:
        return self.path is not None


def run_export(model: nn.Module, cfg: ExportConfig) -> ExportResult:
    """Export ``model`` as ``cfg`` says, check the file, and move it to ``cfg.out`` when the check passes."""
    cfg = cfg.validate()
    model = model.eval()
    size = tuple(cfg.input_size or (model.spec.resolution, model.spec.resolution))
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.stem}.partial-{os.getpid()}{out.suffix}")
    notes: list[str] = []
    try:
        with tempfile.TemporaryDirectory(prefix="mnv4-export-") as work:
            note = _write(model, partial, size, cfg, Path(work))
            if note:
                notes.append(note)
            check, runner = _check(model, partial, size, cfg, notes)
            accuracy = _accuracy(model, runner, partial, size, cfg) if cfg.eval_dir and runner else []
        if check is not None:
            check.path = str(out)
        if check is not None and not check.ok:
            if isinstance(check, Int8Check) and not cfg.enforce_int8_check:
                notes.append("note: the int8 check is not enforced for random weights (their logits are nearly tied, "
                             "so any rounding flips top-1); judge int8 accuracy on trained weights")
            else:
                return ExportResult(None, check, notes, accuracy)
        _move_into_place(partial, out)
        return ExportResult(out, check, notes, accuracy)
    finally:
        _remove(partial)


def _write(model: nn.Module, path: Path, size: tuple[int, int], cfg: ExportConfig, work: Path) -> str | None:
    """Write the file; returns a line worth telling the user (what int8 was calibrated on), or None."""
    fmt, int8 = cfg.format, cfg.precision == "int8"
    if fmt == "onnx":
        from .onnx import export_onnx

        kwargs = dict(input_size=size, opset=cfg.opset, dynamic_hw=cfg.dynamic_hw, exporter=cfg.exporter)
        if not int8:
            export_onnx(model, path, **kwargs)
            return None
        from .data import Preprocess
        from .quantize import quantize_onnx

        fp32 = export_onnx(model, work / "fp32.onnx", **kwargs)
        return quantize_onnx(fp32, path, cfg.calib, preprocess=Preprocess.for_model(model, size),
                             num_images=cfg.calib_images).summary()
    if fmt == "tflite":
        if int8:
            from .quantize import export_litert_int8

            return export_litert_int8(model, path, cfg.calib, input_size=size, num_images=cfg.calib_images).summary()
        from .litert import export_litert

        export_litert(model, path, input_size=size, fp16=cfg.precision == "fp16")
        return None
    if fmt == "executorch":
        if int8:
            from .quantize import export_executorch_int8

            report = export_executorch_int8(model, path, cfg.calib, input_size=size, num_images=cfg.calib_images)
            return report.summary()
        from .executorch import export_executorch

        export_executorch(model, path, input_size=size)
        return None
    if fmt == "aoti":
        from .aoti import export_aoti

        export_aoti(model, path, input_size=size)
        return None
    from .coreml import export_coreml

    export_coreml(model, path, input_size=size, fp16=cfg.precision == "fp16")
    return None


Runner = Callable[[np.ndarray], np.ndarray]


def file_runner(fmt: str, path: Path) -> Runner | None:
    """NCHW float32 batch -> logits, running the exported file (None: Core ML off macOS)."""
    if fmt == "onnx":
        from .onnx import onnx_session, run_session

        session = onnx_session(path)
        return lambda x: run_session(session, x)[0]
    if fmt == "tflite":
        from .litert import LiteRTRunner

        litert = LiteRTRunner(path)
        return lambda x: litert(x)[0]
    if fmt == "executorch":
        from .executorch import ExecuTorchRunner

        et = ExecuTorchRunner(path)
        return lambda x: et(x)[0]
    if fmt == "aoti":
        from .aoti import AOTIRunner

        aoti = AOTIRunner(path)
        return lambda x: aoti(x)[0]
    return None


def _check(model, path: Path, size, cfg: ExportConfig, notes: list[str]) -> tuple[object, Runner | None]:
    fmt = cfg.format
    if fmt == "coreml":
        return _check_coreml(model, path, cfg, notes), None
    runner = file_runner(fmt, path)
    if cfg.precision == "int8":
        from .verify import INT8_MIN_AGREEMENT, INT8_MIN_SQNR_DB, judge_int8

        images = check_images(model, size, cfg)
        name = {"onnx": "ONNX", "tflite": "LiteRT", "executorch": "ExecuTorch"}[fmt]
        check = judge_int8(
            model, runner, images, name, str(path),
            INT8_MIN_AGREEMENT if cfg.min_agreement is None else cfg.min_agreement,
            INT8_MIN_SQNR_DB if cfg.min_sqnr_db is None else cfg.min_sqnr_db,
        )
        return check, runner
    tolerance = {} if cfg.tolerance is None else {"tolerance": cfg.tolerance}
    if fmt == "onnx":
        from .onnx import verify_onnx

        return verify_onnx(model, path, input_size=size, **tolerance), runner
    if fmt == "tflite":
        from .litert import verify_litert

        return verify_litert(model, path, fp16=cfg.precision == "fp16", **tolerance), runner
    if fmt == "executorch":
        from .executorch import verify_executorch

        return verify_executorch(model, path, **tolerance), runner
    from .aoti import verify_aoti

    return verify_aoti(model, path, input_size=size, **tolerance), runner


def _check_coreml(model, path: Path, cfg: ExportConfig, notes: list[str]):
    from .coreml import can_run_coreml, inspect_coreml, verify_coreml

    summary = inspect_coreml(path)
    notes.append(summary.summary())
    if summary.unknown_ops:
        raise RuntimeError(f"the Core ML program uses ops outside the ML Program op set: {summary.unknown_ops}")
    if not can_run_coreml():
        notes.append("note: Core ML predictions need macOS; structural check only on this OS")
        return None
    tolerance = {} if cfg.tolerance is None else {"tolerance": cfg.tolerance}
    return verify_coreml(model, path, fp16=cfg.precision == "fp16", **tolerance)


def check_images(model: nn.Module, size: tuple[int, int], cfg: ExportConfig) -> torch.Tensor:
    """The real images an int8 file is judged on: ``cfg.check_images`` of the ``--eval`` folder (held out) or,
    without one, of the calibration folder; preprocessed as the model's tag is evaluated. Images that cannot be
    decoded are skipped (each logged)."""
    from .data import Preprocess, calibration_images, load_batch

    folder = cfg.eval_dir or cfg.calib
    paths = calibration_images(folder, cfg.check_images, seed=1)
    x = load_batch(paths, Preprocess.for_model(model, size), skipped := [])
    if not len(x):
        raise UserError(f"none of the {len(paths)} images sampled from {folder} for the int8 check could be decoded "
                        f"(first: {skipped[0]})")
    return torch.from_numpy(x)


def _accuracy(model, runner: Runner, path: Path, size, cfg: ExportConfig) -> list:
    from ..deploy import deploy
    from .data import Preprocess
    from .quantize import AccuracyReport, top1_accuracy, torch_runner

    preprocess = Preprocess.for_model(model, size)
    acc_ref, n = top1_accuracy(torch_runner(deploy(model)), cfg.eval_dir, preprocess, batch_size=16)
    acc, _ = top1_accuracy(runner, cfg.eval_dir, preprocess)
    size_bytes = path.stat().st_size if path.is_file() else None
    return [AccuracyReport("PyTorch fp32", acc_ref, n), AccuracyReport(Path(cfg.out).name, acc, n, size_bytes)]


def _move_into_place(partial: Path, out: Path) -> None:
    """``partial`` becomes ``out`` (a file: one atomic rename; a folder (.mlpackage): the old one is moved aside
    first and removed once the new one is in place)."""
    if partial.is_dir() and out.exists():
        aside = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, aside)
        os.replace(partial, out)
        shutil.rmtree(aside, ignore_errors=True)
        return
    os.replace(partial, out)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.unlink()

