"""Core ML export (ML Program, ``.mlpackage``) through coremltools, fp16 or fp32 compute precision.

The deployed model (BN folded, Mobile MQA in its ``math`` form: matmul / softmax / reshape / transpose, all native
ML Program ops) is captured with ``torch.export`` and converted with ``convert_to="mlprogram"``. The paper left the
hybrids out of its Core ML runs for lack of a PyTorch Mobile MQA (the caption of its latency figure); here every
variant converts.

coremltools can only *run* a model on macOS. Elsewhere ``inspect_coreml`` checks the converted program instead:
its input/output names and shapes, the op histogram, and that every op is a registered ML Program (MIL) op; on macOS
``verify_coreml`` also compares predictions with PyTorch.
"""

from __future__ import annotations

import contextlib
import io
import platform
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import UserError
from . import require
from .format import Exportable, ExportFormat, Runner
from .prepare import classifier_exportable
from .verify import FP16_TOLERANCE, FP32_TOLERANCE, ExportCheck, compare, random_inputs

INPUT_NAME = "input"


def export_coreml(
    model: nn.Module,
    path: str | Path,
    *,
    input_size: tuple[int, int] | None = None,
    fp16: bool = True,
    minimum_deployment_target: str = "iOS16",
) -> Path:
    """Convert a ``MobileNetV4`` classifier to ``path`` (an ``.mlpackage`` directory); batch 1, float32 NCHW input.

    ``fp16=True`` (Core ML's default and what the Neural Engine runs) stores weights and computes in fp16;
    ``fp16=False`` keeps fp32 end to end.
    """
    if Path(path).suffix != ".mlpackage":
        raise UserError(f"a Core ML ML Program is saved as a .mlpackage directory; got {path}")
    size = tuple(input_size or (model.spec.resolution, model.spec.resolution))
    exportable = classifier_exportable(model, size, classifier_for="Core ML")
    return write_coreml(exportable, path, fp16=fp16, minimum_deployment_target=minimum_deployment_target)


def write_coreml(
    exportable: Exportable, path: str | Path, *, fp16: bool = True, minimum_deployment_target: str = "iOS16"
) -> Path:
    """``exportable`` as an ML Program ``.mlpackage`` (batch 1), fp16 or fp32 compute precision."""
    ct = require("coremltools")
    path = Path(path)
    if path.suffix != ".mlpackage":
        raise UserError(f"a Core ML ML Program is saved as a .mlpackage directory; got {path}")
    sample = exportable.sample
    quiet = contextlib.redirect_stderr(io.StringIO())  # coremltools' progress bars
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), quiet, torch.no_grad():
        warnings.simplefilter("ignore")
        # torch.export rather than jit.trace: the traced MQA reshapes cast shape tensors to int, which coremltools'
        # TorchScript frontend cannot convert; the ExportedProgram carries static sizes.
        program = torch.export.export(exportable.module, (sample,)).run_decompositions({})
        mlmodel = ct.convert(
            program,
            inputs=[ct.TensorType(name=exportable.input_name, shape=tuple(sample.shape), dtype=np.float32)],
            outputs=[ct.TensorType(name=name) for name in exportable.output_names],
            convert_to="mlprogram",
            compute_precision=ct.precision.FLOAT16 if fp16 else ct.precision.FLOAT32,
            minimum_deployment_target=getattr(ct.target, minimum_deployment_target),
        )
    mlmodel.short_description = f"{exportable.description} ({'fp16' if fp16 else 'fp32'})".lstrip()
    path.parent.mkdir(parents=True, exist_ok=True)
    mlmodel.save(str(path))
    return path


@dataclass
class CoreMLSummary:
    """The structure of a converted ML Program."""

    inputs: dict[str, list[int]]
    outputs: list[str]
    op_counts: Counter = field(default_factory=Counter)
    unknown_ops: list[str] = field(default_factory=list)
    weight_dtypes: Counter = field(default_factory=Counter)

    def summary(self) -> str:
        ops = ", ".join(f"{k} {v}" for k, v in self.op_counts.most_common(8))
        return (
            f"Core ML program: inputs {self.inputs}, outputs {self.outputs}, {sum(self.op_counts.values())} ops "
            f"({ops}, ...); weights {dict(self.weight_dtypes)}; unsupported ops: {self.unknown_ops or 'none'}"
        )


def _known_mil_ops() -> set[str]:
    from coremltools.converters.mil.mil.ops.registry import SSAOpRegistry

    # core_ops: the ops of the ML Program spec ({op name: {opset version: class}}); dialect/custom ops are not
    # runnable by Core ML as such, so they count as unsupported.
    return set(SSAOpRegistry.core_ops)


def inspect_coreml(path: str | Path) -> CoreMLSummary:
    """Read the ``.mlpackage``'s program (works on any OS): I/O, op histogram, ops not in the MIL registry."""
    ct = require("coremltools")
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlmodel = ct.models.MLModel(str(path), skip_model_load=True)
    spec = mlmodel.get_spec()
    if spec.WhichOneof("Type") != "mlProgram":
        raise UserError(f"{path} is not an ML Program (got {spec.WhichOneof('Type')})")
    inputs = {i.name: list(i.type.multiArrayType.shape) for i in spec.description.input}
    outputs = [o.name for o in spec.description.output]
    counts: Counter = Counter()
    dtypes: Counter = Counter()
    for function in spec.mlProgram.functions.values():
        for block in function.block_specializations.values():
            for op in block.operations:
                counts[op.type] += 1
                if op.type == "const":
                    for out in op.outputs:
                        tensor = out.type.tensorType
                        if len(tensor.dimensions) > 1:  # weights, not scalars
                            dtypes[ct.proto.MIL_pb2.DataType.Name(tensor.dataType)] += 1
    known = _known_mil_ops()
    unknown = sorted(op for op in counts if op not in known)
    return CoreMLSummary(inputs, outputs, counts, unknown, dtypes)


def can_run_coreml() -> bool:
    """coremltools predicts only on macOS (its runtime is Core ML.framework)."""
    return platform.system() == "Darwin"


class CoreMLRunner:
    """Runs an ``.mlpackage`` in Core ML (macOS only); call with an NCHW float32 array of the file's input shape."""

    def __init__(self, path: str | Path):
        ct = require("coremltools")
        if not can_run_coreml():
            raise RuntimeError("Core ML predictions need macOS; on this OS use inspect_coreml() for a structural check")
        self.mlmodel = ct.models.MLModel(str(path))
        description = self.mlmodel.get_spec().description
        self.input_name = description.input[0].name
        self.input_shape = tuple(int(s) for s in description.input[0].type.multiArrayType.shape)
        self.output_names = [o.name for o in description.output]

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        out = self.mlmodel.predict({self.input_name: np.asarray(x, dtype=np.float32)})
        return [np.asarray(out[name]) for name in self.output_names]


def verify_coreml(
    model: nn.Module, path: str | Path, *, fp16: bool = True, num_inputs: int = 2, tolerance: float | None = None
) -> ExportCheck:
    """Compare Core ML predictions with PyTorch (macOS only; elsewhere raise with what to do instead)."""
    runner = CoreMLRunner(path)
    shape = runner.input_shape
    inputs = random_inputs((shape[2], shape[3]), [1] * num_inputs, shape[1])
    tol = tolerance if tolerance is not None else (FP16_TOLERANCE if fp16 else FP32_TOLERANCE)
    return compare(model, runner, inputs, "Core ML", str(path), tol)


class CoreMLFormat(ExportFormat):
    """Core ML ML Program (``.mlpackage``, a folder): fp16 (default) or fp32 compute. Off macOS the file cannot be
    run, so its check is structural (``inspect_coreml``)."""

    name, label, suffix = "coreml", "Core ML", ".mlpackage"
    precisions = ("fp32", "fp16")
    default_precision = "fp16"  # what the Neural Engine runs
    folder = True

    def write(self, exportable, path, cfg, calibration, work) -> str | None:
        write_coreml(exportable, path, fp16=cfg.precision == "fp16")
        return None

    def inspect(self, path: Path) -> list[str]:
        summary = inspect_coreml(path)
        if summary.unknown_ops:
            raise RuntimeError(f"the Core ML program uses ops outside the ML Program op set: {summary.unknown_ops}")
        notes = [summary.summary()]
        if not can_run_coreml():
            notes.append("note: Core ML predictions need macOS; structural check only on this OS")
        return notes

    def runner(self, path: Path) -> Runner | None:
        return CoreMLRunner(path) if can_run_coreml() else None
