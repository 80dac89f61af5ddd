"""Numerical checks of an exported model against the PyTorch model it came from.

fp32 / fp16 files: every exporter's ``verify_*`` runs the exported file on a few random inputs and compares with the
PyTorch model in eval mode: ``max |exported - torch| / max |torch|`` over the outputs (``mnv4.testing.relative_error``),
i.e. the largest deviation relative to the output's scale (``ExportCheck``).

int8 files are judged by what quantization is allowed to change and what it must not (``Int8Check``), on real images
(the calibration folder): the top-1 class must agree with fp32 PyTorch on most images, and the logits' signal-to-
quantization-noise ratio ``SQNR = 10 log10(sum(torch^2) / sum((int8 - torch)^2))`` (dB) must stay high. A relative
max error says little here: one outlier logit moves it, while a file with wrong scales can still look "within 0.5".
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
from torch import nn

# Default tolerances relative to the output scale: fp32 runtimes differ from PyTorch by float rounding only (the
# convs sum in a different order; deep random-weight hybrids amplify that to ~1e-4, an export bug gives ~1);
# fp16 weights/activations keep ~3 significant digits; int8 (checked on real calibration images) is judged by
# accuracy, this bound only catches a broken graph (a wrong int8 model is off by about the output scale).
FP32_TOLERANCE = 1e-3
FP16_TOLERANCE = 3e-2

# int8 thresholds, measured (docs/deploy.md, "Judging an int8 file"): healthy per-channel PTQ files of trained models
# agree with fp32 on >= 96% of images at >= 19 dB; files with one wrong quantization parameter or
# miscalibrated ranges fall to <= 80% and <= 10 dB.
INT8_MIN_AGREEMENT = 0.9
INT8_MIN_SQNR_DB = 13.0


@dataclass
class ExportCheck:
    """The result of verifying one exported file."""

    format: str
    path: str
    max_rel_error: float
    tolerance: float
    input_shapes: list[tuple[int, ...]] = field(default_factory=list)
    input_kind: str = "random inputs"

    @property
    def ok(self) -> bool:
        return self.max_rel_error <= self.tolerance

    def summary(self) -> str:
        shapes = ", ".join("x".join(map(str, s)) for s in self.input_shapes)
        verdict = "OK" if self.ok else "FAILED"
        return (
            f"{self.format} check {verdict}: max |diff| / max |torch output| = {self.max_rel_error:.2e} "
            f"(tolerance {self.tolerance:.0e}) on {len(self.input_shapes)} {self.input_kind} ({shapes})"
        )

    def raise_if_failed(self) -> ExportCheck:
        if not self.ok:
            raise RuntimeError(
                f"{self.summary()}: the exported model {self.path} does not reproduce the PyTorch model; "
                "do not ship it (re-export, or report the exporter/runtime versions as a bug)"
            )
        return self


def random_inputs(
    input_size: tuple[int, int], batch_sizes: Sequence[int], in_chans: int = 3, seed: int = 0
) -> list[torch.Tensor]:
    """Standard-normal NCHW inputs (what a normalised image looks like to the network), reproducible by ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(b, in_chans, *input_size, generator=gen) for b in batch_sizes]


def as_outputs(value) -> list[np.ndarray]:
    """A model output (tensor, list/tuple of tensors, or numpy arrays) as a list of float64 numpy arrays."""
    if isinstance(value, (list, tuple)):
        return [np.asarray(v.detach().cpu() if isinstance(v, torch.Tensor) else v, dtype=np.float64) for v in value]
    return [np.asarray(value.detach().cpu() if isinstance(value, torch.Tensor) else value, dtype=np.float64)]


def max_relative_error(actual: Sequence[np.ndarray], expected: Sequence[np.ndarray]) -> float:
    """The worst ``max|a - e| / max|e|`` over matching outputs (shapes must agree)."""
    if len(actual) != len(expected):
        raise RuntimeError(f"the exported model returned {len(actual)} outputs, PyTorch {len(expected)}")
    worst = 0.0
    for a, e in zip(actual, expected, strict=True):
        a = np.asarray(a, dtype=np.float64).reshape(e.shape) if a.size == e.size else a
        if a.shape != e.shape:
            raise RuntimeError(f"output shape {a.shape} differs from PyTorch's {e.shape}")
        scale = np.abs(e).max()
        if scale == 0:
            raise ValueError("the PyTorch output is all zeros: a relative comparison is meaningless")
        worst = max(worst, float(np.abs(a - e).max() / scale))
    return worst


@torch.no_grad()
def compare(
    model: nn.Module,
    run_exported: Callable[[np.ndarray], list[np.ndarray]],
    inputs: Sequence[torch.Tensor],
    fmt: str,
    path: str,
    tolerance: float,
) -> ExportCheck:
    """Run ``model`` (eval mode, fp32) and ``run_exported`` on each input and collect the worst relative error."""
    was_training = model.training
    model.eval()
    worst = 0.0
    try:
        for x in inputs:
            expected = as_outputs(model(x))
            actual = run_exported(x.numpy())
            worst = max(worst, max_relative_error(actual, expected))
    finally:
        model.train(was_training)
    return ExportCheck(fmt, str(path), worst, tolerance, [tuple(x.shape) for x in inputs])


def sqnr_db(actual: np.ndarray, expected: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio of ``actual`` against ``expected``, in dB (inf when they are equal)."""
    expected = np.asarray(expected, dtype=np.float64)
    noise = float(((np.asarray(actual, dtype=np.float64).reshape(expected.shape) - expected) ** 2).sum())
    signal = float((expected**2).sum())
    if signal == 0:
        raise ValueError("the PyTorch output is all zeros: an SQNR is meaningless")
    return float("inf") if noise == 0 else 10.0 * float(np.log10(signal / noise))


@dataclass
class Int8Check:
    """How an int8 file compares with fp32 PyTorch on real images: top-1 agreement and logit SQNR."""

    format: str
    path: str
    agreement: float  # fraction of images whose top-1 class equals PyTorch's
    sqnr_db: float
    num_images: int
    min_agreement: float = INT8_MIN_AGREEMENT
    min_sqnr_db: float = INT8_MIN_SQNR_DB

    @property
    def ok(self) -> bool:
        return self.agreement >= self.min_agreement and self.sqnr_db >= self.min_sqnr_db

    def summary(self) -> str:
        verdict = "OK" if self.ok else "FAILED"
        return (
            f"{self.format} int8 check {verdict}: top-1 agrees with PyTorch fp32 on {100 * self.agreement:.1f}% of "
            f"{self.num_images} images (min {100 * self.min_agreement:.0f}%), logit SQNR {self.sqnr_db:.1f} dB "
            f"(min {self.min_sqnr_db:g} dB)"
        )

    def raise_if_failed(self) -> Int8Check:
        if not self.ok:
            raise RuntimeError(
                f"{self.summary()}: the int8 model {self.path} is too far from fp32; calibrate on more representative "
                "images (--calib, --calib-images), or keep this variant in fp32"
            )
        return self


@torch.no_grad()
def judge_int8(
    model: nn.Module,
    run_exported: Callable[[np.ndarray], np.ndarray],
    images: torch.Tensor,
    fmt: str,
    path: str,
    min_agreement: float = INT8_MIN_AGREEMENT,
    min_sqnr_db: float = INT8_MIN_SQNR_DB,
) -> Int8Check:
    """Run ``model`` (fp32, eval mode) and ``run_exported`` (NCHW float32 batch -> logits) on ``images`` (an NCHW
    batch of preprocessed real images) and compare: top-1 agreement and the SQNR of all logits together."""
    if images.ndim != 4 or len(images) == 0:
        raise ValueError(f"expected a non-empty NCHW batch of images, got shape {tuple(images.shape)}")
    was_training = model.training
    model.eval()
    try:
        expected = np.concatenate([as_outputs(model(x[None]))[0] for x in images])
    finally:
        model.train(was_training)
    actual = np.concatenate([np.asarray(run_exported(x[None].numpy()), dtype=np.float64).reshape(1, -1)
                             for x in images])
    expected = expected.reshape(len(images), -1)
    if actual.shape != expected.shape:
        raise RuntimeError(f"the int8 model returned logits of shape {actual.shape}, PyTorch {expected.shape}")
    agreement = float((actual.argmax(1) == expected.argmax(1)).mean())
    return Int8Check(fmt, str(path), agreement, sqnr_db(actual, expected), len(images), min_agreement, min_sqnr_db)


# ---------------------------------------------------------------------------------------------- comparisons
# What "agrees with PyTorch" means for one kind of model, as a small object the pipeline calls with the PyTorch model
# and a runner of the written file (``mnv4.export.format.Runner``: NCHW float32 -> every output). A classifier's are
# below; a detector's is ``mnv4.detection.export.SameDetections``.


class Comparison(Protocol):
    def __call__(self, model: nn.Module, run: Callable[[np.ndarray], list[np.ndarray]], fmt: str,
                 path: str) -> ExportCheck | Int8Check: ...


def default_tolerance(precision: str) -> float:
    """The fp32 / fp16 check's bound relative to the output scale."""
    return FP16_TOLERANCE if precision == "fp16" else FP32_TOLERANCE


@dataclass
class LogitError:
    """fp32 / fp16 files: every output within ``tolerance`` of PyTorch's, relative to its scale (``compare``)."""

    inputs: Sequence[torch.Tensor]
    tolerance: float = FP32_TOLERANCE

    def __call__(self, model, run, fmt, path) -> ExportCheck:
        return compare(model, run, self.inputs, fmt, path, self.tolerance)


@dataclass
class Int8Agreement:
    """int8 files, on real images: top-1 agreement with fp32 PyTorch and logit SQNR (``judge_int8``)."""

    images: torch.Tensor
    min_agreement: float = INT8_MIN_AGREEMENT
    min_sqnr_db: float = INT8_MIN_SQNR_DB

    def __call__(self, model, run, fmt, path) -> Int8Check:
        return judge_int8(model, lambda x: run(x)[0], self.images, fmt, path, self.min_agreement, self.min_sqnr_db)
