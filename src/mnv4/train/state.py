"""``TrainState``: everything that changes while a run trains — exactly what a checkpoint holds.

The model, EMA, optimiser, schedule and grad scaler; the position (epoch, step in the epoch, global step); the best
validation score and the step it was reached at (``best.pt`` holds that step's state); the epoch rows so far; and the
running sums of the epoch in progress, so that an epoch interrupted by a kill and resumed reports the same mean loss
and counts as one that ran through.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from .checkpoint import rng_state, set_rng_state
from .config import TrainConfig
from .distributed import all_reduce_sum
from .optim import Optimization


@dataclass
class EpochTotals:
    """Sums over the optimiser steps of the epoch in progress, over all processes.

    Each process adds its step losses and its count of replaced (undecodable) training images to ``pending`` on its
    device (no host sync per step); ``reduce`` sums ``pending`` over the processes into the plain totals — before
    every checkpoint and at the end of the epoch, so the totals in a checkpoint are complete.
    """

    loss_sum: float = 0.0  # sum over steps of the mean loss of the step (mean over processes)
    steps: int = 0
    replaced: int = 0  # training images that could not be decoded and were replaced by the next one
    pending: torch.Tensor | None = None  # (loss sum, replaced) of this process since the last reduce
    pending_steps: int = 0

    def add_step(self, loss: torch.Tensor, replaced: int) -> None:
        if self.pending is None:
            self.pending = torch.zeros(2, dtype=torch.float64, device=loss.device)
        self.pending[0] += loss
        if replaced:
            self.pending[1] += replaced
        self.pending_steps += 1

    def reduce(self, world_size: int) -> None:
        if self.pending is not None:
            loss, replaced = all_reduce_sum(self.pending).tolist()
            self.loss_sum += loss / world_size
            self.replaced += int(replaced)
            self.pending.zero_()
        self.steps += self.pending_steps
        self.pending_steps = 0

    @property
    def mean_loss(self) -> float:
        return self.loss_sum / max(self.steps, 1)

    def state_dict(self) -> dict[str, Any]:
        return {"loss_sum": self.loss_sum, "steps": self.steps, "replaced": self.replaced}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loss_sum, self.steps, self.replaced = state["loss_sum"], state["steps"], state["replaced"]


@dataclass
class TrainState:
    """A run in progress (see the module docstring). ``state_dict`` is the checkpoint's content."""

    model: nn.Module
    optim: Optimization
    ema: AveragedModel | None = None
    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    best_top1: float | None = None
    best_step: int | None = None
    history: list[dict] = field(default_factory=list)  # one row per finished epoch (what epochs.csv holds)
    totals: EpochTotals = field(default_factory=EpochTotals)

    def start_next_epoch(self) -> None:
        self.epoch, self.step_in_epoch, self.totals = self.epoch + 1, 0, EpochTotals()

    def state_dict(self, cfg: TrainConfig, num_samples: int) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "optimizer": self.optim.optimizer.state_dict(),
            "scheduler": self.optim.scheduler.state_dict(),
            "scaler": self.optim.scaler.state_dict(),
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "data_order": {"seed": cfg.seed, "global_batch": cfg.global_batch, "num_samples": num_samples},
            "rng": rng_state(),
            "best_top1": self.best_top1,
            "best_step": self.best_step,
            "history": self.history,
            "epoch_totals": self.totals.state_dict(),
            "config": cfg.to_dict(),
        }

    def load_state_dict(self, ckpt: dict[str, Any]) -> None:
        """Restore a checkpoint's state (after ``check_resumable``)."""
        self.model.load_state_dict(ckpt["model"])
        if self.ema is not None and ckpt.get("ema") is not None:
            self.ema.load_state_dict(ckpt["ema"])
        self.optim.optimizer.load_state_dict(ckpt["optimizer"])
        self.optim.scheduler.load_state_dict(ckpt["scheduler"])
        self.optim.scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng"])
        self.epoch, self.step_in_epoch, self.global_step = ckpt["epoch"], ckpt["step_in_epoch"], ckpt["global_step"]
        self.best_top1, self.best_step = ckpt.get("best_top1"), ckpt.get("best_step")
        self.history = list(ckpt.get("history", []))
        self.totals = EpochTotals()
        if ckpt.get("epoch_totals") is not None:
            self.totals.load_state_dict(ckpt["epoch_totals"])
