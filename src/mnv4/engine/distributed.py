"""Process-group plumbing for ``torchrun``: who am I, which device, reductions, and SyncBN for our BN+act layers."""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from ..errors import UserError


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto") -> DistContext:
    """Read torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK) and join the group: NCCL on CUDA, gloo on CPU.
    Multi-node runs come for free through torchrun's rendezvous (``--nnodes``, ``--rdzv-endpoint``)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    if use_cuda and not torch.cuda.is_available():
        raise UserError(f"device {device!r} was asked for but CUDA is not available; use --device cpu")
    if device.startswith("cuda:") and int(device.split(":")[1]) >= torch.cuda.device_count():
        raise UserError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if use_cuda:
        dev = torch.device("cuda", local_rank) if device in ("auto", "cuda") else torch.device(device)
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


class SyncBatchNormAct2d(nn.SyncBatchNorm):
    """``nn.SyncBatchNorm`` that keeps the activation of our ``BatchNormAct2d`` (torch's converter would drop it).
    Same state-dict keys as BatchNorm2d. PyTorch's SyncBN only synchronises CUDA tensors."""

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm):
        super().__init__(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
        self.act = getattr(bn, "act", nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(super().forward(x))


def convert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d (incl. BatchNormAct2d) by ``SyncBatchNormAct2d``, keeping weights and stats."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, nn.SyncBatchNorm):
        new = SyncBatchNormAct2d(module).to(module.weight.device if module.affine else "cpu")
        new.load_state_dict(module.state_dict())
        new.train(module.training)
        return new
    for name, child in module.named_children():
        module.add_module(name, convert_sync_batchnorm(child))
    return module


@contextmanager
def main_process_first(ctx: DistContext):
    """Rank 0 runs the block first (e.g. repairs files), then the other ranks run it (and see the repaired files)."""
    if ctx.enabled and not ctx.is_main:
        dist.barrier()
    try:
        yield
    finally:
        if ctx.enabled and ctx.is_main:
            dist.barrier()


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def all_reduce_gradients(params: list[nn.Parameter], world_size: int) -> None:
    """Average gradients over the processes in one reduction, for runs whose processes run different sub-networks
    (the search: each samples its own architecture), where DDP's bucketed hooks do not apply. A tensor no process
    used keeps ``grad = None`` (its optimiser state is not touched, exactly as in a single process)."""
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    used = torch.tensor([p.grad is not None for p in params], dtype=grads[0].dtype, device=grads[0].device)
    flat = all_reduce_sum(torch.cat([g.reshape(-1) for g in grads] + [used]))
    counts = flat[-len(params):].tolist()
    offset = 0
    for p, count in zip(params, counts, strict=True):
        n = p.numel()
        p.grad = flat[offset : offset + n].view_as(p) / world_size if count > 0 else None
        offset += n


def all_reduce_bn_statistics(model: nn.Module, world_size: int) -> None:
    """Average BN running statistics over the processes (each ran its own sub-network): identical replicas."""
    buffers = [b for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
               for b in (m.running_mean, m.running_var)]
    flat = all_reduce_sum(torch.cat([b.reshape(-1) for b in buffers])) / world_size
    offset = 0
    for b in buffers:
        b.copy_(flat[offset : offset + b.numel()].view_as(b))
        offset += b.numel()


def broadcast_buffers(module: nn.Module, src: int = 0) -> None:
    """Every process takes rank ``src``'s buffers (BN running statistics). DDP broadcasts them before each training
    forward, but the last forward of an epoch updates them on each rank from its own shard, so without this each rank
    would validate a slightly different model from the one rank ``src`` saves."""
    buffers = [b for b in module.buffers() if b.dtype.is_floating_point]
    if not buffers:
        return
    flat = torch.cat([b.reshape(-1) for b in buffers])
    dist.broadcast(flat, src=src)
    offset = 0
    for b in buffers:
        b.copy_(flat[offset : offset + b.numel()].view_as(b))
        offset += b.numel()
