"""ExecuTorch export (``.pte`` with the XNNPACK delegate), fp32 and int8, verified in ExecuTorch's Python runtime.

ExecuTorch is PyTorch's on-device runtime (the successor of PyTorch Mobile). fp32: ``torch.export`` of the deployed
model (BN folded; Mobile MQA in its ``math`` form) -> ``to_edge_transform_and_lower`` with the XNNPACK partitioner
-> ``.pte``. Every op of every variant is delegated to XNNPACK (tested), so the file runs as one XNNPACK subgraph:
for the hybrids this needs one rewrite before partitioning (``no_op_copies_to_views``), as the Mobile MQA's batched
matmuls decompose into shape-preserving ``expand_copy`` and ``unsqueeze_copy`` ops that XNNPACK does not take --
left alone they cut Hybrid-M into 25 delegate calls with 48 portable-kernel copies between them.
int8: PT2E post-training quantization with ExecuTorch's ``XNNPACKQuantizer`` (per-channel symmetric int8 weights,
per-tensor affine int8 activations, histogram calibration), then the same lowering; quantization-aware training
(``mnv4.export.qat``) uses the same quantizer with fake-quant, so PTQ and QAT files differ only in their numbers.

The file takes a fixed batch-1 float32 NCHW input, like the LiteRT one; ``ExecuTorchRunner`` runs it image by image.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import UserError
from . import require
from .format import ExportFormat, Runner
from .prepare import classifier_exportable
from .verify import FP32_TOLERANCE, ExportCheck, compare, random_inputs

XNNPACK_BACKEND = "XnnpackBackend"


def xnnpack_quantizer(qat: bool = False):
    """The one quantizer of every int8 ExecuTorch file, post-training and quantization-aware alike:
    ``XNNPACKQuantizer`` with per-channel symmetric int8 weights and per-tensor int8 activations."""
    require("executorch")
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )

    return XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_qat=qat))


def no_op_copies_to_views(graph_module: torch.fx.GraphModule):
    """Edge-dialect pass: drop ``expand_copy`` ops whose output has their input's shape, and turn ``unsqueeze_copy``
    into ``view_copy`` (which XNNPACK runs as a reshape). Both only add a size-1 dimension or repeat nothing, so the
    values are unchanged; what changes is that the whole graph becomes one XNNPACK subgraph."""
    from executorch.exir.dialects._ops import ops as exir_ops
    from torch.fx.passes.infra.pass_base import PassResult

    graph, modified = graph_module.graph, False
    for node in list(graph.nodes):
        if node.op != "call_function":
            continue
        if node.target == exir_ops.edge.aten.expand_copy.default:
            if tuple(node.args[0].meta["val"].shape) == tuple(node.meta["val"].shape):
                node.replace_all_uses_with(node.args[0])
                graph.erase_node(node)
                modified = True
        elif node.target == exir_ops.edge.aten.unsqueeze_copy.default:
            with graph.inserting_before(node):
                view = graph.call_function(
                    exir_ops.edge.aten.view_copy.default, (node.args[0], list(node.meta["val"].shape))
                )
            view.meta = dict(node.meta)
            node.replace_all_uses_with(view)
            graph.erase_node(node)
            modified = True
    if modified:
        graph_module.recompile()
    return PassResult(graph_module, modified)


def lower_to_executorch(module: nn.Module, sample: tuple[torch.Tensor, ...], path: str | Path) -> Path:
    """``torch.export`` ``module`` (fp32, or a PT2E-converted int8 graph) at ``sample``'s shapes, delegate it to
    XNNPACK and write the ``.pte`` program to ``path``."""
    require("executorch")
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    path = Path(path)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.export.export(module, sample)
        edge = to_edge_transform_and_lower(
            program, transform_passes=[no_op_copies_to_views], partitioner=[XnnpackPartitioner()]
        )
        lowered = edge.to_executorch()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(lowered.buffer)
    return path


def export_executorch(model: nn.Module, path: str | Path, *, input_size: tuple[int, int] | None = None) -> Path:
    """Export a ``MobileNetV4`` classifier to an fp32 ``.pte`` (XNNPACK, batch 1, float32 NCHW input)."""
    size = tuple(input_size or (model.spec.resolution, model.spec.resolution))
    exportable = classifier_exportable(model, size, classifier_for="ExecuTorch")
    return lower_to_executorch(exportable.module, (exportable.sample,), path)


def set_threads(threads: int) -> None:
    """The ExecuTorch runtime's CPU thread pool size (process-wide, as its pybindings offer it)."""
    from executorch.extension.pybindings import portable_lib

    from .toolkit_logs import native_stderr_to

    with warnings.catch_warnings(), native_stderr_to(None):  # "Resetting threadpool to N threads."
        warnings.simplefilter("ignore")  # both calls are marked experimental; they are the only thread control
        if portable_lib._threadpool_get_thread_count() != threads:
            portable_lib._unsafe_reset_threadpool(threads)


class ExecuTorchRunner:
    """Runs a ``.pte`` file's ``forward`` in ExecuTorch's Python runtime; call with an NCHW float32 array."""

    def __init__(self, path: str | Path, threads: int | None = None):
        from .toolkit_logs import native_stderr_to

        path = Path(path)
        if not path.is_file():
            raise UserError(f"{path} is not a file (expected an ExecuTorch .pte program)")
        with native_stderr_to(None):  # loading the runtime library probes the CPU and prints five lines about it
            require("executorch.runtime")
            from executorch.runtime import Runtime

            runtime = Runtime.get()
            if threads:
                set_threads(threads)
            self.program = runtime.load_program(path)
            self.method = self.program.load_method("forward")
        meta = self.method.metadata
        self.input_shape = tuple(int(s) for s in meta.input_tensor_meta(0).sizes())

    def run_tensor(self, x: torch.Tensor) -> list[torch.Tensor]:
        """One call of the program (``x`` must have the exported shape)."""
        return list(self.method.execute([x]))

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        """One sample at a time (the file has batch 1); a larger batch is run image by image."""
        results = []
        for sample in np.asarray(x, dtype=np.float32):
            outs = self.run_tensor(torch.from_numpy(np.ascontiguousarray(sample[None])))
            results.append([o.numpy().copy() for o in outs])
        return [np.concatenate([r[i] for r in results]) for i in range(len(results[0]))]


def delegated_ops(path: str | Path) -> dict[str, int]:
    """How many calls of each backend the program makes and how many ops run outside any delegate: a fully
    delegated model is ``{"XnnpackBackend": 1}`` (plus nothing else)."""
    require("executorch")
    from executorch.exir._serialize._program import deserialize_pte_binary

    program = deserialize_pte_binary(Path(path).read_bytes()).program
    counts: dict[str, int] = {}
    for plan in program.execution_plan:
        delegates = [d.id for d in plan.delegates]
        for chain in plan.chains:
            for instr in chain.instructions:
                args = instr.instr_args
                if type(args).__name__ == "DelegateCall":
                    name = delegates[args.delegate_index]
                else:
                    name = plan.operators[args.op_index].name if hasattr(args, "op_index") else type(args).__name__
                counts[name] = counts.get(name, 0) + 1
    return counts


def verify_executorch(
    model: nn.Module,
    path: str | Path,
    *,
    num_inputs: int = 2,
    tolerance: float = FP32_TOLERANCE,
    seed: int = 0,
) -> ExportCheck:
    """Run the fp32 ``.pte`` on ``num_inputs`` random inputs in ExecuTorch's runtime and compare with ``model``."""
    runner = ExecuTorchRunner(path)
    _, chans, h, w = runner.input_shape
    inputs = random_inputs((h, w), [1] * num_inputs, chans, seed)
    return compare(model, runner, inputs, "ExecuTorch", str(path), tolerance)


class ExecuTorchFormat(ExportFormat):
    """ExecuTorch ``.pte`` with the XNNPACK delegate, run in ExecuTorch's Python runtime: fp32 or int8 (PT2E)."""

    name, label, suffix = "executorch", "ExecuTorch", ".pte"
    precisions = ("fp32", "int8")

    def write(self, exportable, path, cfg, calibration, work) -> str | None:
        if cfg.precision == "int8":
            from .quantize import executorch_int8

            return executorch_int8(exportable, path, calibration).summary()
        lower_to_executorch(exportable.module, (exportable.sample,), path)
        return None

    def runner(self, path: Path) -> Runner:
        return ExecuTorchRunner(path)
