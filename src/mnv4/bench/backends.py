"""The runtimes ``mnv4 bench`` measures, one small class each.

A backend says whether it can run here (``unavailable_reason``: None, or why not -- a missing package, one that is
installed but fails to import, no GPU, no C++ compiler), and ``prepare``s a model into a zero-argument callable that
runs one forward pass on a fixed input. Optional packages are imported inside the methods, so a missing or broken one
makes its backend unavailable, never the tool.
"""

from __future__ import annotations

import importlib
import shutil
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import UserError


class NotApplicable(Exception):
    """This backend cannot run this particular model (e.g. the deploy pass only knows MobileNetV4)."""


def import_failure(*modules: str, extra: str | None = None) -> str | None:
    """None when every module imports; otherwise why one does not -- not installed, or installed but broken (an
    ``OSError`` from a shared library that does not load, an ``AttributeError`` from mismatched versions...)."""
    hint = f"; pip install 'mnv4[{extra}]'" if extra else ""
    for module in modules:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as err:
            return f"needs {err.name or module}{hint}"
        except Exception as err:  # noqa: BLE001 -- whatever breaks an optional import makes the backend unavailable
            first_line = str(err).splitlines()[0] if str(err) else ""
            return f"{module} fails to import ({type(err).__name__}: {first_line})"
    return None


@dataclass(frozen=True)
class Prepared:
    run: Callable[[], object]  # one forward pass
    sync: Callable[[], None] | None = None  # wait for asynchronous work before reading the clock
    note: str = ""


class Backend:
    name = ""
    description = ""
    device = "cpu"
    dtype = "fp32"
    in_default_run = True  # False: slow to build; measured by `mnv4 bench --full`, or when named in --backends
    setup_s_estimate = 1.0  # prepare + first call, per model: seconds on the reference machine (docs/bench.md)

    def unavailable_reason(self) -> str | None:
        return None

    def available(self) -> bool:
        return self.unavailable_reason() is None

    def batch_sizes(self, requested: int, sweep: Sequence[int]) -> list[int]:
        """Batch sizes to measure: the requested one (CPU); accelerators sweep."""
        return [requested]

    def prepare(self, model: nn.Module, example: torch.Tensor, workdir: Path, threads: int) -> Prepared:
        raise NotImplementedError


def _torch_runner(model: nn.Module, example: torch.Tensor) -> Callable[[], object]:
    def run():
        with torch.inference_mode():
            return model(example)

    return run


class EagerBackend(Backend):
    name = "eager"
    description = "PyTorch eager, fp32, NCHW"
    setup_s_estimate = 0.2

    def prepare(self, model, example, workdir, threads):
        return Prepared(_torch_runner(model.eval(), example.contiguous()))


def deploy_for_inference(model: nn.Module) -> tuple[nn.Module, str]:
    """BN (and layer scale) folded, channels_last: ``mnv4.deploy`` for MobileNetV4; for the torchvision baselines,
    PyTorch's own FX conv-BN fusion (``torch.fx.experimental.optimization.fuse``)."""
    from ..model import MobileNetV4

    if isinstance(model, MobileNetV4):
        from ..deploy import deploy

        return deploy(model, channels_last=True), "mnv4.deploy"
    try:
        from torch.fx.experimental.optimization import fuse

        fused = fuse(model.eval())
    except Exception as err:  # noqa: BLE001 -- FX tracing fails in many ways; the baseline just has no column
        raise NotApplicable(f"FX conv-BN fusion failed: {err}") from err
    return fused.to(memory_format=torch.channels_last), "torch.fx fuse"


class DeployedBackend(Backend):
    name = "deployed"
    description = "PyTorch eager, BN folded, channels_last, fp32"
    setup_s_estimate = 0.5

    def unavailable_reason(self):
        return import_failure("mnv4.deploy")

    def prepare(self, model, example, workdir, threads):
        deployed, how = deploy_for_inference(model)
        return Prepared(_torch_runner(deployed, example.contiguous(memory_format=torch.channels_last)), note=how)


class CompileBackend(Backend):
    name = "compile"
    description = "torch.compile (inductor) of the deployed model, channels_last, fp32"
    setup_s_estimate = 15.0  # a cold inductor cache; its cache makes re-runs faster

    def unavailable_reason(self):
        if not hasattr(torch, "compile"):
            return "this PyTorch has no torch.compile"
        if not (shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")):
            return "torch.compile on CPU needs a C++ compiler (none on PATH)"
        return None

    def prepare(self, model, example, workdir, threads):
        try:
            deployed, how = deploy_for_inference(model)
        except (ImportError, NotApplicable):
            deployed, how = model.eval(), "not folded"
        example = example.contiguous(memory_format=torch.channels_last)
        compiled = torch.compile(deployed, dynamic=False)
        run = _torch_runner(compiled, example)
        run()  # compile now so that compilation counts as setup time, not as warm-up
        return Prepared(run, note=f"{how}; inductor")


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    description = "ONNX Runtime CPU execution provider, fp32, graph optimisations on"
    setup_s_estimate = 3.0

    def unavailable_reason(self):
        return import_failure("onnx", "onnxruntime", "onnxslim", "mnv4.export.onnx", extra="onnx")

    def prepare(self, model, example, workdir, threads):
        from ..export.onnx import export_onnx, onnx_session
        from ..model import MobileNetV4

        path = workdir / "model.onnx"
        if isinstance(model, MobileNetV4):  # deployed (BN folded) and simplified by the exporter
            export_onnx(model, path, input_size=tuple(example.shape[-2:]))
            note = "mnv4.export.onnx"
        else:  # the torchvision baselines: PyTorch's exporter; ORT folds their BNs when it optimises the graph
            with torch.inference_mode(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notices
                torch.onnx.export(model.eval(), (example,), str(path), input_names=["input"],
                                  output_names=["logits"], opset_version=18, dynamo=False)
            note = "torch.onnx.export"
        session = onnx_session(path, threads=threads)  # all graph optimisations on, intra-op threads fixed
        feed = {session.get_inputs()[0].name: example.numpy()}
        return Prepared(lambda: session.run(None, feed), note=note)


class LiteRTBackend(Backend):
    name = "litert"
    description = "LiteRT (TFLite) interpreter, XNNPACK, fp32; exported by litert-torch (mnv4.export.litert)"
    in_default_run = False  # the litert-torch conversion: ~26 s per model, 184 s of a 10-min default run
    setup_s_estimate = 26.0

    def unavailable_reason(self):
        from ..export.toolkit_logs import quiet_toolkit_env

        quiet_toolkit_env()  # before TensorFlow's first import: its C++ info lines
        return import_failure("litert_torch", "ai_edge_litert.interpreter", "mnv4.export.litert", extra="tflite")

    def prepare(self, model, example, workdir, threads):
        from ..export.litert import LiteRTRunner, convert_quiet, export_litert
        from ..model import MobileNetV4

        if example.shape[0] != 1:
            raise NotApplicable("LiteRT files are exported with batch 1")
        path = workdir / "model.tflite"
        if isinstance(model, MobileNetV4):  # deployed (BN folded), MQA in its math form
            export_litert(model, path, input_size=tuple(example.shape[-2:]))
            note = "mnv4.export.litert"
        else:  # the torchvision baselines: the same litert-torch conversion, on the model as it is
            convert_quiet(model.eval(), (example,), path)
            note = "litert-torch convert"
        runner = LiteRTRunner(path, threads=threads)
        interpreter = runner.interpreter
        interpreter.set_tensor(runner.input["index"], example.numpy().astype(runner.input["dtype"]))
        output_index = runner.outputs[0]["index"]

        def run():  # the output read is included, as ONNX Runtime's and PyTorch's runs return theirs
            interpreter.invoke()
            return interpreter.get_tensor(output_index)

        return Prepared(run, note=note)


class ExecuTorchBackend(Backend):
    """ExecuTorch's runtime with the XNNPACK delegate, fp32 or int8 (PT2E, ``mnv4.export.executorch``)."""

    def __init__(self, int8: bool = False):
        self.int8 = int8
        self.in_default_run = False  # lowering to XNNPACK: ~34 s per model (239 s of a 10-min default run); int8
        self.setup_s_estimate = 60.0 if int8 else 34.0  # adds PT2E calibration with histogram observers
        self.dtype = "int8" if int8 else "fp32"
        self.name = "executorch-int8" if int8 else "executorch"
        self.description = (
            f"ExecuTorch runtime, XNNPACK delegate, {'int8 (PT2E, XNNPACKQuantizer, per-channel)' if int8 else 'fp32'}"
            "; exported by mnv4.export.executorch"
        )

    def unavailable_reason(self):
        return import_failure("executorch.runtime", "executorch.exir", "torchao.quantization.pt2e",
                              "executorch.backends.xnnpack.partition.xnnpack_partitioner", extra="executorch")

    def prepare(self, model, example, workdir, threads):
        from ..export.executorch import ExecuTorchRunner, export_executorch, lower_to_executorch, xnnpack_quantizer
        from ..model import MobileNetV4

        if example.shape[0] != 1:
            raise NotApplicable("ExecuTorch files are exported with batch 1")
        path = workdir / "model.pte"
        size = tuple(example.shape[-2:])
        mnv4_model = isinstance(model, MobileNetV4)
        if self.int8:  # latency does not depend on what calibration shows: a few noise images set the ranges
            from ..export.prepare import deployed_for_export
            from ..export.quantize import pt2e_quantize

            net = deployed_for_export(model) if mnv4_model else model.eval()
            gen = torch.Generator().manual_seed(0)
            noise = [torch.randn(1, example.shape[1], *size, generator=gen) for _ in range(4)]
            lower_to_executorch(pt2e_quantize(net, xnnpack_quantizer(), noise, size), (example,), path)
        elif mnv4_model:  # deployed (BN folded), MQA in its math form
            export_executorch(model, path, input_size=size)
        else:  # the torchvision baselines: the same lowering of the model as it is (XNNPACK fuses their BNs)
            lower_to_executorch(model.eval(), (example,), path)
        runner = ExecuTorchRunner(path, threads=threads)
        inputs = [example.contiguous()]
        return Prepared(lambda: runner.method.execute(inputs), note="mnv4.export.executorch" if mnv4_model
                        else "executorch lowering of the model as is")


class AOTInductorBackend(Backend):
    name = "aoti"
    description = "AOTInductor package (CPU, freezing) of the deployed model, channels_last, fp32"
    in_default_run = False  # compiling C++ takes minutes per model
    setup_s_estimate = 90.0  # about a minute for Conv-S (docs/deploy.md), more for the large models

    def unavailable_reason(self):
        from ..export.aoti import compiler_missing

        if not hasattr(torch, "_inductor") or not hasattr(torch._inductor, "aoti_compile_and_package"):
            return "this PyTorch has no AOTInductor packaging (torch._inductor.aoti_compile_and_package)"
        return compiler_missing()

    def prepare(self, model, example, workdir, threads):
        from ..export.aoti import AOTIRunner, compile_aoti

        try:
            deployed, how = deploy_for_inference(model)
        except NotApplicable:
            deployed, how = model.eval(), "not folded"
        example = example.contiguous(memory_format=torch.channels_last)
        runner = AOTIRunner(compile_aoti(deployed, example, workdir / "model.pt2"))
        return Prepared(lambda: runner.run_tensor(example), note=f"{how}; AOTInductor")


class CudaBackend(Backend):
    """GPU eager, channels_last, with a batch-size sweep; fp32 or bf16 autocast."""

    device = "cuda"

    def __init__(self, dtype: str):
        if dtype not in ("fp32", "bf16"):
            raise ValueError(f"CUDA backend dtype must be 'fp32' or 'bf16', got {dtype!r}")  # a programming error
        self.dtype = dtype
        self.name = f"cuda-{dtype}"
        self.description = f"PyTorch eager on CUDA, channels_last, {'bf16 autocast' if dtype == 'bf16' else 'fp32'}"

    def unavailable_reason(self):
        if not torch.cuda.is_available():
            return "no CUDA device"
        if self.dtype == "bf16" and not torch.cuda.is_bf16_supported():
            return "this GPU has no bf16 support"
        return None

    def batch_sizes(self, requested, sweep):
        return sorted(set(sweep) | {requested})

    def prepare(self, model, example, workdir, threads):
        model = model.to("cuda", memory_format=torch.channels_last).eval()
        example = example.to("cuda").contiguous(memory_format=torch.channels_last)
        autocast_dtype = torch.bfloat16 if self.dtype == "bf16" else None

        def run():
            with torch.inference_mode(), torch.autocast("cuda", dtype=autocast_dtype, enabled=bool(autocast_dtype)):
                return model(example)

        return Prepared(run, sync=torch.cuda.synchronize)


def all_backends() -> list[Backend]:
    return [
        EagerBackend(),
        DeployedBackend(),
        CompileBackend(),
        OnnxRuntimeBackend(),
        LiteRTBackend(),
        ExecuTorchBackend(),
        ExecuTorchBackend(int8=True),
        AOTInductorBackend(),
        CudaBackend("fp32"),
        CudaBackend("bf16"),
    ]


def default_backend_names(full: bool = False) -> list[str]:
    """The backends a run without ``--backends`` measures: those of the default run, or with ``full`` every one (the
    slow-to-build ones, ``in_default_run = False``, too)."""
    return [b.name for b in all_backends() if full or b.in_default_run]


def resolve_backends(names: Sequence[str] | None, full: bool = False) -> tuple[list[Backend], dict[str, str]]:
    """(backends to run, {name: why skipped}). ``None``: ``default_backend_names(full)``. A backend that cannot run
    here (missing or broken package, no GPU) is skipped with its reason and the others run; unknown names, or a list
    in which no backend can run, raise a ``UserError``."""

    known = {b.name: b for b in all_backends()}
    names = default_backend_names(full) if names is None else list(dict.fromkeys(names))
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UserError(f"unknown backend {', '.join(map(repr, unknown))}; choose from: {', '.join(known)}")
    if not names:
        raise UserError(f"no backends given; choose from: {', '.join(known)}")
    skipped = {n: reason for n in names if (reason := known[n].unavailable_reason())}
    chosen = [known[n] for n in names if n not in skipped]
    if not chosen:
        reasons = "; ".join(f"{n}: {reason}" for n, reason in skipped.items())
        raise UserError(f"none of the requested backends is available here ({reasons})")
    return chosen, skipped
