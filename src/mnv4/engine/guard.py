"""Stopping on NaN/inf before it spreads: a non-finite input batch, loss or gradient must not reach the weights, the
optimiser state, the BatchNorm running statistics or the EMA.

BatchNorm is the hard part: a forward pass in train mode updates the running statistics before any loss exists, so
a NaN anywhere in a forward poisons them (92 buffers of Conv-S). The guard copies the BN buffers at the start of each
optimiser step (one ``cat`` into a preallocated buffer) and puts them back when the step met a non-finite value.

Two modes, because reading a device value on the host waits for the GPU:

- eager (CPU): each value is checked as it appears, the BN buffers are restored and ``NonFiniteError`` is raised at
  once — before the backward pass, the optimiser step and the EMA update;
- device-side (CUDA): nothing is read on the host per step. A sticky flag on the device records the first bad value;
  at the end of the step the BN buffers are restored *on the device* where the flag is set (``torch.where``), and
  the fused AdamW skips its update through its ``found_inf`` input (the mechanism ``GradScaler`` uses). The flag is
  read when the loop reads its logs anyway (every ``log_every`` steps and before every checkpoint) and the run stops
  then, with the weights, BN statistics and optimiser state of the last good step (the EMA only keeps averaging
  those).

``benchmarks/train_guard.py`` measures the cost per step.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import UserError
from .checkpoint import list_checkpoints
from .distributed import all_reduce_sum

KINDS = ("input", "loss", "gradients")
ADVICE = {
    "input": "Check the input pipeline (mean/std, custom transforms): images must be finite.",
    "loss": "Try a lower --lr, a longer warm-up, gradient clipping (--set grad_clip=1.0), or bf16 instead of fp16.",
    "gradients": "Try a lower --lr, a longer warm-up, a smaller grad_clip, or bf16 instead of fp16.",
}


class NonFiniteError(UserError, RuntimeError):
    """NaN/inf in an input batch, the loss or the gradients. The run stopped with the model, its BN statistics, the
    optimiser and the EMA as they were before the step that met it; the last checkpoint on disk is intact. (A
    ``RuntimeError`` too, as earlier versions raised.)"""


NonFiniteLossError = NonFiniteError  # the name of earlier versions


class FlatCopy:
    """A preallocated flat copy of a list of same-dtype tensors: ``save`` and ``restore_where`` are a few kernel
    launches whatever the number of tensors."""

    def __init__(self, tensors: list[torch.Tensor]):
        self.flat_views = [t.view(-1) for t in tensors]
        self.saved = torch.cat(self.flat_views).clone() if tensors else None
        self.current = torch.empty_like(self.saved) if tensors else None
        sizes = [t.numel() for t in tensors]
        self.current_views = list(self.current.split(sizes)) if tensors else []
        self.saved_views = list(self.saved.split(sizes)) if tensors else []

    def save(self) -> None:
        if self.saved is not None:
            torch.cat(self.flat_views, out=self.saved)

    def restore(self) -> None:
        if self.saved is not None:
            torch._foreach_copy_(self.flat_views, self.saved_views)

    def restore_where(self, flag: torch.Tensor) -> None:
        """Put the saved values back where ``flag`` (a 0-d bool on the same device) is set; no host sync."""
        if self.saved is not None:
            torch.cat(self.flat_views, out=self.current)
            torch.where(flag, self.saved, self.current, out=self.current)
            torch._foreach_copy_(self.flat_views, self.current_views)


class NonFiniteGuard:
    """See the module docstring. Call ``begin_step`` before a step's first micro-batch, ``observe`` on each input
    batch, loss and gradient norm, ``before_update`` right before the optimiser step, and ``check`` where the loop
    reads its logs."""

    def __init__(self, model: nn.Module, device: torch.device, out: Path, distributed: bool, eager: bool | None = None):
        buffers = [
            t
            for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
            for t in (m.running_mean, m.running_var, m.num_batches_tracked)
            if t is not None
        ]
        by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
        for t in buffers:
            by_dtype.setdefault(t.dtype, []).append(t)
        self.copies = [FlatCopy(group) for group in by_dtype.values()]
        self.eager = device.type != "cuda" if eager is None else eager
        self.distributed, self.out = distributed, out
        self.bad = torch.zeros((), dtype=torch.bool, device=device)  # sticky: a non-finite value since the start
        # global step and kind (index into KINDS) of the first one
        self.first_step = torch.zeros((), dtype=torch.long, device=device)
        self.first_kind = torch.zeros((), dtype=torch.long, device=device)
        self.step, self.epoch = 0, 0

    def begin_step(self, global_step: int, epoch: int) -> None:
        self.step, self.epoch = global_step, epoch
        for copy in self.copies:
            copy.save()

    def observe(self, kind: str, value: torch.Tensor) -> None:
        """Record whether ``value`` is all finite (a sum is: NaN and inf propagate through it)."""
        bad_now = ~torch.isfinite(value.detach().float().sum())
        if self.eager:
            if self.distributed:  # every process must stop at the same point, or the others wait for it forever
                bad_now = all_reduce_sum(bad_now.float()) > 0
            if bool(bad_now):
                for copy in self.copies:
                    copy.restore()
                raise NonFiniteError(self.message(self.step + 1, kind))
            return
        first_time = bad_now & ~self.bad  # Python scalars in torch.where: no host-to-device copy, no sync
        self.first_step = torch.where(first_time, self.step + 1, self.first_step)
        self.first_kind = torch.where(first_time, KINDS.index(kind), self.first_kind)
        self.bad |= bad_now

    def before_update(self, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> None:
        """Device-side mode: undo this step's BN updates and skip the optimiser step if a bad value was seen."""
        if self.eager:
            return
        if self.distributed:  # asynchronous on NCCL: no host sync
            self.bad.copy_(all_reduce_sum(self.bad.float()) > 0)
        for copy in self.copies:
            copy.restore_where(self.bad)
        if not scaler.is_enabled():  # with fp16 the scaler sets found_inf itself (NaN gradients follow a NaN loss)
            if not optimizer.defaults.get("fused"):
                raise RuntimeError("the device-side NaN guard needs a fused optimiser (found_inf)")
            optimizer.found_inf = self.bad.float()  # read by the fused AdamW kernel: skip the update when set

    def check(self) -> None:
        """Read the device flag (a host sync: call where the loop reads its logs anyway) and stop if it is set."""
        if self.eager or not bool(self.bad):
            return
        raise NonFiniteError(self.message(int(self.first_step), KINDS[int(self.first_kind)]))

    def message(self, step: int, kind: str) -> str:
        what = {"input": "an input batch has NaN/inf values", "loss": "the loss became NaN/inf"}.get(
            kind, "the gradients became NaN/inf"
        )
        last = list_checkpoints(self.out)
        if last:
            where = f"The last checkpoint, {last[-1]}, is intact: change the settings and resume with --resume auto."
        else:
            where = "No checkpoint was written yet: change the settings and start the run again."
        return (
            f"{what} at global step {step} (epoch {self.epoch}); the run stopped before it reached the weights, "
            f"BatchNorm statistics or EMA. {where} {ADVICE[kind]}"
        )
