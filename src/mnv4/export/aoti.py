"""AOTInductor export: the deployed model compiled ahead of time into a ``.pt2`` package (a shared library + weights)
for servers and desktops, loaded back with ``torch._inductor.aoti_load_package`` and verified against PyTorch.

``torch.export`` of the deployed model (BN folded, channels_last, Mobile MQA in its ``math`` form) ->
``aoti_compile_and_package`` for the CPU with ``freezing`` (weights become constants, so Inductor folds them into
its conv / matmul kernels' packed layouts at compile time instead of re-packing per call). The package runs from
C++ (``AOTIModelPackageLoader``) or Python without the model's source code; it is specific to the CPU architecture,
the PyTorch version and the input shape it was compiled for. Compiling takes minutes for the larger variants and
needs a C++ compiler.
"""

from __future__ import annotations

import contextlib
import copy
import io
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import UserError
from .format import Exportable, ExportFormat, Runner
from .prepare import classifier_exportable
from .verify import FP32_TOLERANCE, ExportCheck, compare, random_inputs

# freezing: constant-fold the weights into the compiled kernels (the documented AOTInductor setting for inference).
INDUCTOR_CONFIGS = {"freezing": True}


def compiler_missing() -> str | None:
    """Why AOTInductor cannot compile here (no C++ compiler on PATH), or None."""
    if not (shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")):
        return "AOTInductor needs a C++ compiler (none of c++, g++, clang++ is on PATH)"
    return None


def compile_aoti(module: nn.Module, sample: torch.Tensor, path: str | Path) -> Path:
    """``torch.export`` ``module`` (eval mode) at ``sample``'s shape and layout and compile it with AOTInductor for
    the CPU into the package ``path`` (``.pt2``)."""
    if reason := compiler_missing():
        raise UserError(reason)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.export.export(module, (sample,))
        out = torch._inductor.aoti_compile_and_package(
            program, package_path=str(path), inductor_configs=dict(INDUCTOR_CONFIGS)
        )
    return Path(out)


def export_aoti(
    model: nn.Module, path: str | Path, *, input_size: tuple[int, int] | None = None, batch_size: int = 1
) -> Path:
    """Compile a ``MobileNetV4`` (deployed first) for the CPU into an AOTInductor package at ``path`` (``.pt2``),
    for float32 input of shape ``(batch_size, C, H, W)`` (channels_last in memory; ``AOTIRunner`` converts)."""
    if Path(path).suffix != ".pt2":
        raise UserError(f"an AOTInductor package is a .pt2 file; got {path}")
    size = tuple(input_size or (model.spec.resolution, model.spec.resolution))
    return write_aoti(classifier_exportable(model, size), path, batch_size=batch_size)


def write_aoti(exportable: Exportable, path: str | Path, *, batch_size: int = 1) -> Path:
    """Compile ``exportable`` (a channels_last copy of its module) for ``batch_size`` inputs into ``path``."""
    net = copy.deepcopy(exportable.module).to(memory_format=torch.channels_last)
    sample = exportable.sample.expand(batch_size, *exportable.sample.shape[1:])
    return compile_aoti(net, sample.contiguous(memory_format=torch.channels_last), path)


class AOTIRunner:
    """A loaded AOTInductor package; call with an NCHW float32 array (its compiled batch size, or one image at a
    time for a batch-1 package)."""

    def __init__(self, path: str | Path):
        path = Path(path)
        if not path.is_file():
            raise UserError(f"{path} is not a file (expected an AOTInductor .pt2 package)")
        self.module = torch._inductor.aoti_load_package(str(path))

    def run_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """One call (``x`` in the compiled shape; the package was compiled for channels_last input)."""
        with torch.inference_mode():
            return self.module(x.contiguous(memory_format=torch.channels_last))

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        x = torch.from_numpy(np.asarray(x, dtype=np.float32))
        outs = [self.run_tensor(sample[None]) for sample in x]
        return [torch.cat(outs).numpy()]


def verify_aoti(
    model: nn.Module,
    path: str | Path,
    *,
    input_size: tuple[int, int] | None = None,
    num_inputs: int = 2,
    tolerance: float = FP32_TOLERANCE,
    seed: int = 0,
) -> ExportCheck:
    """Load the package and compare it with ``model`` on ``num_inputs`` random batch-1 inputs."""
    runner = AOTIRunner(path)
    size = tuple(input_size or (model.spec.resolution, model.spec.resolution))
    inputs = random_inputs(size, [1] * num_inputs, model.in_chans, seed)
    return compare(model, runner, inputs, "AOTInductor", str(path), tolerance)


class AOTIFormat(ExportFormat):
    """AOTInductor ``.pt2`` package for the CPU (needs a C++ compiler), loaded back with ``aoti_load_package``."""

    name, label, suffix = "aoti", "AOTInductor", ".pt2"

    def write(self, exportable, path, cfg, calibration, work) -> str | None:
        write_aoti(exportable, path)
        return None

    def runner(self, path: Path) -> Runner:
        return AOTIRunner(path)
