"""What an export format is: one ``ExportFormat`` object per format (``mnv4.export.registry`` lists them), which
writes an ``Exportable`` to a file, runs a written file, and says what it takes.

A format knows nothing about classifiers or detectors. What is exported -- the module, its sample input, its
input/output names -- comes as an ``Exportable`` from a ``ModelKind`` (``mnv4.export.kind``), and what "agrees with
PyTorch" means for that model comes from the kind's comparison; the format supplies the file and a runner for it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .data import Preprocess

# NCHW float32 batch -> every output of the exported file, as numpy arrays
Runner = Callable[[np.ndarray], list[np.ndarray]]


@dataclass(frozen=True)
class Exportable:
    """What a format writes: ``module`` (eval mode, fp32) maps one NCHW float32 tensor to a tensor or a tuple of
    tensors, traced at ``sample``'s shape."""

    module: nn.Module
    sample: torch.Tensor  # (1, C, H, W)
    output_names: tuple[str, ...]
    input_name: str = "input"
    description: str = ""  # stored in the file where the format has a field for it
    dynamic_batch: bool = True  # keep the batch dimension symbolic where the format can (ONNX)
    dynamic_hw: bool = False  # the same for height and width
    output_axes: Mapping[str, Mapping[int, str]] = field(default_factory=dict)  # more symbolic output dimensions
    simplify: bool = True  # graph simplification passes (ONNX: onnxslim) may run on it


@dataclass(frozen=True)
class Calibration:
    """The images an int8 file is calibrated on, preprocessed as the model is evaluated."""

    folder: Path
    preprocess: Preprocess
    num_images: int = 256


class ExportFormat:
    """One export format. Subclasses set the class attributes and implement ``write`` and ``runner``."""

    name = ""  # the --format value
    label = ""  # what checks and messages call it ("ONNX")
    suffix = ""  # what --out must end in
    precisions: tuple[str, ...] = ("fp32",)
    default_precision = "fp32"
    folder = False  # the file is a folder (.mlpackage)
    dynamic_batch = False  # a written file takes any batch size (checked at batch 1 and 2)
    several_outputs = False  # writes modules with several outputs (features_only models)
    data_dependent_shapes = False  # writes graphs whose output sizes depend on the input (a detector's NMS)
    options: tuple[str, ...] = ()  # the ExportConfig fields only this format reads (e.g. "dynamic_hw")

    def write(self, exportable: Exportable, path: Path, cfg, calibration: Calibration | None, work: Path) -> str | None:
        """Write ``exportable`` to ``path`` at ``cfg.precision`` (int8: calibrated on ``calibration``); ``work`` is a
        scratch folder for intermediate files. Returns a line worth telling the user, or None."""
        raise NotImplementedError

    def runner(self, path: Path) -> Runner | None:
        """A callable running the written file (None: it cannot run on this machine, e.g. Core ML off macOS)."""
        raise NotImplementedError

    def inspect(self, path: Path) -> list[str]:
        """Structural checks of the written file that need no runtime; returns notes, raises on a broken file."""
        return []

    def check_label(self, precision: str) -> str:
        return f"{self.label} fp16" if precision == "fp16" else self.label
