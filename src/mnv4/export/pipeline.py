"""One export as a library call: ``ExportConfig`` says what to write, ``run_export(model, cfg, kind)`` writes and
checks it, for any format of the registry (``mnv4.export.registry.FORMATS``) and any kind of model
(``mnv4.export.kind``: a classifier by default, ``mnv4.detection.export.Detector`` for a detector).

Nothing half-written, nothing unverified: the file is written into a staging folder next to ``cfg.out`` (named as
``mnv4.engine.outputs.temp_path`` names temporary files: ``.<name>.tmp-<pid>@<host>``), checked there, and moved
into place only when its check passes. A failed export or check leaves whatever was at ``cfg.out`` before untouched
and removes the staging folder with everything in it (intermediate files such as the fp32 ONNX file of an int8
export included); the staging folders of killed exports are removed by the next export into the same folder
(``remove_stale_temp_files``).

Checks: the format writes and runs the file, the kind says what to compare (``ModelKind.comparison``): for a
classifier, fp32 / fp16 files against PyTorch on random inputs (relative error), int8 files on real images
(``--eval`` if given, else a sample of the calibration folder) by top-1 agreement and logit SQNR; Core ML files off
macOS by their program structure only.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from torch import nn

from ..engine.outputs import remove_stale_temp_files, temp_path
from ..errors import UserError
from ..specs import MIN_INPUT_SIZE
from .format import ExportFormat
from .kind import Classifier, ModelKind
from .registry import FORMATS, export_format
from .verify import ExportCheck, Int8Check

PRECISION_FLAGS = {"fp16": "--fp16", "int8": "--int8", "fp32": "--fp32"}
# ExportConfig fields only some formats read (ExportFormat.options): the flag, and why the others ignore it
FORMAT_OPTIONS = {
    "dynamic_hw": ("--dynamic-hw", "the other formats have a fixed input size"),
    "ort_int8_weights": ("--ort-int8-weights", "it picks ONNX Runtime's int8 kernels"),
}


@dataclass(frozen=True)
class ExportConfig:
    """What ``run_export`` writes. Messages name the ``mnv4 export`` flags each field comes from."""

    format: str | None  # a registry name; None: the one ``out``'s suffix names
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
    ort_int8_weights: str | None = None  # ONNX int8: "u8" (None: the default) or "s8-7bit" (quantize.ORT_INT8_WEIGHTS)
    tolerance: float | None = None  # fp32/fp16 check; None: the format's default
    min_agreement: float | None = None  # int8 check; None: verify.INT8_MIN_AGREEMENT
    min_sqnr_db: float | None = None  # int8 check; None: verify.INT8_MIN_SQNR_DB
    enforce_int8_check: bool = True  # False for random weights: their near-tied logits flip top-1 under any rounding

    @property
    def export_format(self) -> ExportFormat:
        return export_format(self.format, self.out)

    def validate(self, kind: ModelKind | None = None) -> ExportConfig:
        """Every check that needs no model and no work: flags, input folders, the output path. Returns the config
        with ``format`` filled in (from ``out``'s suffix when it was None)."""
        kind = kind or Classifier()
        fmt = self.export_format
        if reason := kind.refuses(fmt):
            raise UserError(reason)
        flag = PRECISION_FLAGS.get(self.precision)
        if flag is None:
            raise UserError(f"unknown precision {self.precision!r}; choose from {', '.join(PRECISION_FLAGS)}")
        if self.precision not in fmt.precisions:
            raise UserError(f"{flag} is not available for --format {fmt.name} (it exports {', '.join(fmt.precisions)})")
        if self.precision not in kind.precisions:
            raise UserError(f"{flag} is not available for a {kind.name} (it exports {', '.join(kind.precisions)})")
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
        if self.tolerance is not None and not 0 <= self.tolerance < math.inf:  # NaN fails every comparison
            raise UserError(f"--tolerance must be a finite number >= 0, got {self.tolerance}")
        if self.min_agreement is not None and not 0 <= self.min_agreement <= 1:
            raise UserError(f"--min-agreement must be in [0, 1], got {self.min_agreement}")
        if self.min_sqnr_db is not None and not math.isfinite(self.min_sqnr_db):
            raise UserError(f"--min-sqnr must be a finite number of dB, got {self.min_sqnr_db}")
        if self.input_size is not None and (len(self.input_size) != 2 or min(self.input_size) < MIN_INPUT_SIZE):
            got = " ".join(map(str, self.input_size))
            raise UserError(f"--size must be >= {MIN_INPUT_SIZE} in both dimensions, got {got}")
        if self.calib_images < 1:
            raise UserError(f"--calib-images must be >= 1, got {self.calib_images}")
        if self.check_images < 1:
            raise UserError(f"the int8 check needs >= 1 image, got {self.check_images}")
        for option, (flag, why) in FORMAT_OPTIONS.items():
            if getattr(self, option) not in (None, False) and option not in fmt.options:
                takers = " / ".join(f.name for f in FORMATS.values() if option in f.options)
                raise UserError(f"{flag} is for --format {takers} ({why})")
        if self.ort_int8_weights is not None:
            from .quantize import ort_int8_settings

            ort_int8_settings(self.ort_int8_weights)  # a known choice
            if not int8:
                raise UserError("--ort-int8-weights applies with --int8 (it picks ONNX Runtime's int8 kernels)")
        for flag, path in (("--calib", self.calib), ("--eval", self.eval_dir)):
            if path is not None and not Path(path).is_dir():
                raise UserError(f"{flag} {path} is not a folder of images")
        check_output_path(Path(self.out), fmt)
        return replace(self, format=fmt.name)


def check_output_path(out: Path, fmt: ExportFormat) -> None:
    """Refuse, before any work, an output path that cannot be written: wrong suffix, a folder in the way (for a
    file format), a parent that is a file or a folder we may not write to."""
    if out.suffix != fmt.suffix:
        raise UserError(f"--out for --format {fmt.name} must end in {fmt.suffix}, got {out}")
    if out.exists() and out.is_dir() != fmt.folder:
        what = "a folder" if out.is_dir() else "a file"
        raise UserError(f"--out {out} exists and is {what}; remove it or choose another path")
    parent = out.parent
    while not parent.exists():  # the folders run_export will create; the first existing one must be writable
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"--out {out}: {parent} is a file, not a folder")
    probe = temp_path(parent / out.name)  # a kill right here leaves a name the next start removes
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
    except OSError as err:
        raise UserError(f"--out {out}: cannot write in {parent} ({err.strerror or err})") from None
    os.unlink(probe)


@dataclass
class ExportResult:
    """What ``run_export`` did: the file's path (None when its check failed and nothing was written), the check
    (None when there was nothing to compare on), notes for the user, and the ``--eval`` accuracy rows."""

    path: Path | None
    check: ExportCheck | Int8Check | None
    notes: list[str] = field(default_factory=list)
    accuracy: list = field(default_factory=list)  # [AccuracyReport of PyTorch fp32, AccuracyReport of the file]

    @property
    def ok(self) -> bool:
        return self.path is not None


def run_export(model: nn.Module, cfg: ExportConfig, kind: ModelKind | None = None) -> ExportResult:
    """Export ``model`` (a ``kind``, default a classifier) as ``cfg`` says, check the file, and move it to
    ``cfg.out`` when the check passes."""
    kind = kind or Classifier()
    cfg = cfg.validate(kind)
    fmt = cfg.export_format
    model = model.eval()
    size = kind.input_size(model, cfg)
    comparison = kind.comparison(model, fmt, size, cfg)  # its inputs are read before the slow part
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    notes = [f"removed {path}, left by a killed run" for path in remove_stale_temp_files(out.parent)]
    with staging_folder(out) as stage:
        partial, work = stage / out.name, stage / "work"
        work.mkdir()
        calibration = kind.calibration(model, size, cfg) if cfg.precision == "int8" else None
        note = fmt.write(kind.exportable(model, fmt, size, cfg), partial, cfg, calibration, work)
        notes += [note] if note else []
        notes += fmt.inspect(partial)
        run = fmt.runner(partial)
        check = comparison(model, run, fmt.check_label(cfg.precision), str(out)) if run and comparison else None
        accuracy = kind.accuracy(model, run, partial, size, cfg) if cfg.eval_dir and run else []
        if check is not None and not check.ok:
            if isinstance(check, Int8Check) and not cfg.enforce_int8_check:
                notes.append("note: the int8 check is not enforced for random weights (their logits are nearly tied, "
                             "so any rounding flips top-1); judge int8 accuracy on trained weights")
            else:
                return ExportResult(None, check, notes, accuracy)
        _move_into_place(partial, out, stage)
    return ExportResult(out, check, notes, accuracy)


@contextmanager
def staging_folder(out: Path) -> Iterator[Path]:
    """A fresh folder next to ``out`` under its temporary name (``temp_path``), removed with everything in it on the
    way out, whatever happens."""
    stage = temp_path(out)
    shutil.rmtree(stage, ignore_errors=True)  # this pid's own leftover (a pid reused after a kill)
    stage.mkdir()
    try:
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _move_into_place(partial: Path, out: Path, stage: Path) -> None:
    """``partial`` becomes ``out``: a file is one atomic rename; a folder (.mlpackage) cannot replace one, so the
    old one is first moved into the staging folder (removed with it) and the new one renamed into place."""
    if partial.is_dir() and out.exists():
        os.replace(out, stage / "replaced")
    os.replace(partial, out)
