"""``RunState``: everything that changes while a run trains — exactly what a checkpoint holds, besides what the task
adds (the detector's spec, the search's controller).

The model, EMA, optimiser, schedule and grad scaler; the position (epoch, step in the epoch, global step); the best
validation score and the step it was reached at (``best.pt`` holds that step's state); the epoch rows so far; and the
running sums of the epoch in progress, so that an epoch interrupted by a kill and resumed reports the same mean losses
and counts as one that ran through.

The layout is the one ``mnv4 train`` has always written (``tests/data/checkpoint_schemas.json``); the best score is
stored under the task's own key (``best_top1``, ``best_ap``, ``best_miou``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from .checkpoint import rng_state, set_rng_state
from .distributed import all_reduce_sum
from .optim import Optimization


@dataclass
class EpochTotals:
    """Sums over the optimiser steps of the epoch in progress, over all processes.

    Each process adds its step losses (the total ``loss`` and the task's named parts) and its count of replaced
    (undecodable) training images to ``pending`` on its device (no host sync per step); ``reduce`` sums ``pending``
    over the processes into the plain totals — before every checkpoint and at the end of the epoch, so the totals
    in a checkpoint are complete.
    """

    sums: dict[str, float] = field(default_factory=dict)  # per loss term: sum over steps of the step's mean
    steps: int = 0
    replaced: int = 0  # training images that could not be decoded and were replaced by the next one
    pending: torch.Tensor | None = None  # (loss terms..., replaced) of this process since the last reduce
    pending_names: tuple[str, ...] = ()
    pending_steps: int = 0

    def add_step(self, losses: dict[str, torch.Tensor], replaced: int) -> None:
        if self.pending is None:
            self.pending_names = tuple(losses)
            device = next(iter(losses.values())).device
            self.pending = torch.zeros(len(losses) + 1, dtype=torch.float64, device=device)
        self.pending[:-1] += torch.stack([losses[k].double() for k in self.pending_names])
        if replaced:
            self.pending[-1] += replaced
        self.pending_steps += 1

    def reduce(self, world_size: int) -> None:
        if self.pending is not None:
            *terms, replaced = all_reduce_sum(self.pending).tolist()
            for name, value in zip(self.pending_names, terms, strict=True):
                self.sums[name] = self.sums.get(name, 0.0) + value / world_size
            self.replaced += int(replaced)
            self.pending.zero_()
        self.steps += self.pending_steps
        self.pending_steps = 0

    def means(self) -> dict[str, float]:
        """The epoch's mean of each loss term (``loss`` first)."""
        return {name: value / max(self.steps, 1) for name, value in {"loss": 0.0, **self.sums}.items()}

    def state_dict(self) -> dict[str, Any]:
        parts = {k: v for k, v in self.sums.items() if k != "loss"}
        state = {"loss_sum": self.sums.get("loss", 0.0), "steps": self.steps, "replaced": self.replaced}
        if parts:  # detection's classification / box terms (classification has none: its layout is unchanged)
            state["part_sums"] = parts
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sums = {"loss": state["loss_sum"], **state.get("part_sums", {})}
        self.steps, self.replaced = state["steps"], state["replaced"]


@dataclass
class RunState:
    """A run in progress (see the module docstring). ``state_dict`` is the checkpoint's content."""

    model: nn.Module
    optim: Optimization
    ema: AveragedModel | None = None
    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    best_score: float | None = None
    best_step: int | None = None
    history: list[dict] = field(default_factory=list)  # one row per finished epoch (what epochs.csv holds)
    totals: EpochTotals = field(default_factory=EpochTotals)

    def start_next_epoch(self) -> None:
        self.epoch, self.step_in_epoch, self.totals = self.epoch + 1, 0, EpochTotals()

    def state_dict(self, config: dict, data_order: dict, score_key: str | None) -> dict[str, Any]:
        state = {
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            **self.optim.state_dict(),
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "data_order": data_order,
            "rng": rng_state(),
        }
        if score_key is not None:
            state.update({score_key: self.best_score, "best_step": self.best_step})
        state.update({"history": self.history, "epoch_totals": self.totals.state_dict(), "config": config})
        return state

    def load_state_dict(self, ckpt: dict[str, Any], score_key: str | None) -> None:
        """Restore a checkpoint's state (after the task checked that it belongs to this run)."""
        self.model.load_state_dict(ckpt["model"])
        if self.ema is not None and ckpt.get("ema") is not None:
            self.ema.load_state_dict(ckpt["ema"])
        self.optim.load_state_dict(ckpt)
        set_rng_state(ckpt["rng"])
        self.epoch, self.step_in_epoch, self.global_step = ckpt["epoch"], ckpt["step_in_epoch"], ckpt["global_step"]
        if score_key is not None:
            self.best_score, self.best_step = ckpt.get(score_key), ckpt.get("best_step")
        self.history = list(ckpt.get("history", []))
        self.totals = EpochTotals()
        if ckpt.get("epoch_totals") is not None:
            self.totals.load_state_dict(ckpt["epoch_totals"])
