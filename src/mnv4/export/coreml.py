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
from .prepare import deployed_for_export
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
    ct = require("coremltools")
    path = Path(path)
    if path.suffix != ".mlpackage":
        raise UserError(f"a Core ML ML Program is saved as a .mlpackage directory; got {path}")
    net = deployed_for_export(model, classifier_for="Core ML")
    size = tuple(input_size or (model.spec.resolution, model.spec.resolution))
    sample = torch.zeros(1, net.in_chans, *size)
    quiet = contextlib.redirect_stderr(io.StringIO())  # coremltools' progress bars
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), quiet, torch.no_grad():
        warnings.simplefilter("ignore")
        # torch.export rather than jit.trace: the traced MQA reshapes cast shape tensors to int, which coremltools'
        # TorchScript frontend cannot convert; the ExportedProgram carries static sizes.
        program = torch.export.export(net, (sample,)).run_decompositions({})
        mlmodel = ct.convert(
            program,
            inputs=[ct.TensorType(name=INPUT_NAME, shape=tuple(sample.shape), dtype=np.float32)],
            outputs=[ct.TensorType(name="logits" if net.num_classes else "pre_logits")],
            convert_to="mlprogram",
            compute_precision=ct.precision.FLOAT16 if fp16 else ct.precision.FLOAT32,
            minimum_deployment_target=getattr(ct.target, minimum_deployment_target),
        )
    mlmodel.short_description = f"mnv4 {net.spec.name} ({'fp16' if fp16 else 'fp32'}, BN folded)"
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


def verify_coreml(model: nn.Module, path: str | Path, *, fp16: bool = True, num_inputs: int = 2) -> ExportCheck:
    """Compare Core ML predictions with PyTorch (macOS only; elsewhere raise with what to do instead)."""
    ct = require("coremltools")
    if not can_run_coreml():
        raise RuntimeError("Core ML predictions need macOS; on this OS use inspect_coreml() for a structural check")
    mlmodel = ct.models.MLModel(str(path))
    shape = list(mlmodel.get_spec().description.input[0].type.multiArrayType.shape)
    inputs = random_inputs((shape[2], shape[3]), [1] * num_inputs, shape[1])

    def run(x: np.ndarray) -> list[np.ndarray]:
        out = mlmodel.predict({INPUT_NAME: x})
        return [np.asarray(v) for v in out.values()]

    return compare(model, run, inputs, "Core ML", str(path), FP16_TOLERANCE if fp16 else FP32_TOLERANCE)
