"""The device side of a run: the process group and torch's settings for the run's lifetime, autocast, the model on its
device (memory format, SyncBN, DDP, ``torch.compile``) and its EMA."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from ..errors import UserError
from .distributed import DistContext, cleanup_distributed, convert_sync_batchnorm, init_distributed


@contextmanager
def run_scope(device: str, threads: int | None, deterministic: bool = False) -> Iterator[DistContext]:
    """Join the process group (under ``torchrun``) and set torch's threads and determinism for the run; afterwards
    leave the group and put the caller's settings back (a run is one call in the caller's process)."""
    saved = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark
    ctx = init_distributed(device)
    try:
        if threads:
            torch.set_num_threads(threads)
        if deterministic:
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False
        elif ctx.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        yield ctx
    finally:
        cleanup_distributed()
        torch.set_num_threads(saved[0])
        torch.use_deterministic_algorithms(saved[1])
        torch.backends.cudnn.benchmark = saved[2]


def autocast(device: torch.device, precision: str | None):
    if precision in (None, "fp32"):
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def device_defaults(cfg, device: torch.device, fields: tuple[str, ...]) -> tuple[object, list[str]]:
    """``cfg`` with the engine settings among ``fields`` (precision, channels_last, compile) that it leaves at
    ``None`` set for ``device``, and a note for the run's first lines. On CUDA: bf16 autocast (fp32 where the GPU has
    no bf16), channels_last and ``torch.compile`` -- the settings of timm's and torchvision's fast GPU recipes; on the
    CPU fp32, NCHW and eager, whose speed they do not help and whose first steps compiling would dominate."""
    on_cuda = device.type == "cuda"
    defaults = {"precision": "bf16" if on_cuda and torch.cuda.is_bf16_supported() else "fp32",
                "channels_last": on_cuda, "compile": on_cuda}
    values = {k: defaults[k] for k in fields if getattr(cfg, k) is None}
    notes = []
    if values:
        chosen = ", ".join(f"{k} {v}" for k, v in values.items())
        flags = " / ".join(f"--{k.replace('_', '-')}" for k in fields)
        notes.append(f"for {device.type}: {chosen} ({flags} to choose)")
    return dataclasses.replace(cfg, **values), notes


def place_model(model: nn.Module, ctx: DistContext, channels_last: bool = False, sync_bn: bool = False) -> nn.Module:
    """The model on the run's device and memory format; SyncBN across the processes when asked (CUDA only)."""
    model.to(ctx.device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if sync_bn and ctx.enabled:
        if ctx.device.type != "cuda":
            raise UserError("--sync-bn needs CUDA (PyTorch's SyncBatchNorm does not synchronise CPU tensors)")
        model = convert_sync_batchnorm(model)
    return model


def wrap_for_training(model: nn.Module, ctx: DistContext, compile: bool = False) -> nn.Module:
    """The model as the step loop runs it: DDP-wrapped under ``torchrun``, compiled when asked."""
    wrapped = model
    if ctx.enabled:
        ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        wrapped = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if compile:
        wrapped = torch.compile(wrapped)
    return wrapped


def make_ema(model: nn.Module, decay: float | None) -> AveragedModel | None:
    """An exponential moving average of the weights and buffers (None when ``decay`` is None or 0)."""
    if not decay:
        return None
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
