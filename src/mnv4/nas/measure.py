"""Latency on this machine for the NAS cost models and design studies: runtimes prepared once, timed interleaved.

Two things make CPU timings on a shared machine comparable: the compared callables are timed round-robin (a load
spike hits all of them alike), and ONNX Runtime's worker threads do not spin after a run (they would otherwise steal
the cores from whatever is timed next).
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Hashable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import UserError

# CPU runtimes a study can time; 'onnxruntime' is ORT's CPU provider on the exported (deployed, simplified) graph.
RUNTIMES = ("eager", "deployed", "compile", "onnxruntime", "litert")
ONNX_OPSET = 18


def time_interleaved(
    fns: Mapping[Hashable, Callable[[], object]], rounds: int, runs_per_round: int = 1, warmup: int = 2
) -> dict[Hashable, list[float]]:
    """Seconds per call of each callable: ``warmup`` untimed calls each, then ``rounds`` rounds in which every
    callable runs ``runs_per_round`` timed calls in turn. Returns, per key, the median of each round (``rounds``
    values): ratios between keys computed round by round show the spread the load on the machine causes."""
    if rounds < 1 or runs_per_round < 1 or warmup < 0:
        raise ValueError(f"need rounds >= 1, runs_per_round >= 1 and warmup >= 0, got {rounds}, {runs_per_round}, "
                         f"{warmup}")
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    per_round: dict[Hashable, list[float]] = {key: [] for key in fns}
    for _ in range(rounds):
        for key, fn in fns.items():
            samples = []
            for _ in range(runs_per_round):
                start = time.perf_counter()
                fn()
                samples.append(time.perf_counter() - start)
            per_round[key].append(float(np.median(samples)))
    return per_round


def export_module(module: nn.Module, example: torch.Tensor, path: Path) -> Path:
    """Any eval-mode module (a block, the stem, the head) as a simplified ONNX graph with a fixed input shape.

    ``mnv4.export.onnx.export_onnx`` is for whole models (>= 32 px inputs); the parts of one are smaller.
    """
    from ..export import require
    from ..export.onnx import simplify_onnx

    onnx = require("onnx")
    with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # tracer / deprecation chatter
        torch.onnx.export(module.eval(), (example,), str(path), dynamo=False, opset_version=ONNX_OPSET,
                          input_names=["input"], output_names=["output"], do_constant_folding=True)
    onnx.save(simplify_onnx(onnx.load(str(path))), str(path))
    return path


def export_for_ort(module: nn.Module, example: torch.Tensor, workdir: Path) -> Path:
    """An ONNX file of ``module`` at ``example``'s shape in ``workdir``: a ``MobileNetV4`` through ``export_onnx``
    (deployed, simplified), any other module through ``export_module`` (fold it first if it should run folded)."""
    from ..export.onnx import export_onnx
    from ..model import MobileNetV4

    path = _new_file(workdir)
    if isinstance(module, MobileNetV4):
        export_onnx(module, path, input_size=tuple(example.shape[-2:]), dynamic_batch=False)
    else:
        export_module(module, example, path)
    return path


def session_runner(path: Path, example: torch.Tensor, threads: int) -> Callable[[], object]:
    """One ORT forward pass (CPU provider, all graph optimisations, ``threads`` intra-op threads, no spinning) of
    the ONNX file ``path`` on ``example``."""
    from ..export.onnx import onnx_session

    session = onnx_session(path, threads=threads, spin=False)
    feed = {session.get_inputs()[0].name: example.numpy()}
    return lambda: session.run(None, feed)


def ort_runner(module: nn.Module, example: torch.Tensor, workdir: Path, threads: int) -> Callable[[], object]:
    """``session_runner`` of ``export_for_ort(module, example, workdir)``."""
    return session_runner(export_for_ort(module, example, workdir), example, threads)


def null_runner(example: torch.Tensor, workdir: Path, threads: int) -> Callable[[], object]:
    """An ORT session of a single Identity op on ``example``'s shape: the fixed cost of one ``session.run`` (feed,
    fetch, dispatch) that every separately timed part pays and a whole network pays once."""
    from ..export import require

    onnx = require("onnx")
    helper, shape = onnx.helper, list(example.shape)
    info = [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, shape) for n in ("input", "output")]
    graph = helper.make_graph([helper.make_node("Identity", ["input"], ["output"])], "null", info[:1], info[1:])
    path = _new_file(workdir)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)]), str(path))
    return session_runner(path, example, threads)


def _new_file(workdir: Path) -> Path:
    handle, name = tempfile.mkstemp(suffix=".onnx", dir=workdir)
    os.close(handle)
    return Path(name)


def check_runtimes(names: Sequence[str]) -> list[str]:
    """The runtimes to time (unknown or unavailable ones raise one ``UserError``)."""
    from ..bench.backends import resolve_backends

    names = list(dict.fromkeys(names))
    unknown = [n for n in names if n not in RUNTIMES]
    if unknown or not names:
        raise UserError(f"unknown runtime(s) {', '.join(map(repr, unknown)) or '(none given)'}; choose from "
                        f"{', '.join(RUNTIMES)}")
    try:
        resolve_backends(names)
    except ValueError as err:
        raise UserError(str(err)) from None
    return names


def prepare_runtime(runtime: str, model: nn.Module, example: torch.Tensor, workdir: Path,
                    threads: int) -> Callable[[], object]:
    """A zero-argument forward pass of ``model`` on ``example`` in ``runtime`` (see ``RUNTIMES``): ``mnv4 bench``'s
    backends, except that ONNX Runtime runs without spinning threads (``ort_runner``)."""
    from ..bench.backends import all_backends

    if runtime == "onnxruntime":
        return ort_runner(model, example, workdir, threads)
    backend = {b.name: b for b in all_backends()}[runtime]
    return backend.prepare(model, example, Path(workdir), threads).run
