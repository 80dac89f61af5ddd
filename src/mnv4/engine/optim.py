"""The optimiser side of every run: parameter groups, the optimisers by name, the LR schedules by name (warm-up +
cosine, warm-up + poly), and one optimiser step (coupled L2, clipping, AMP scaling, the NaN guard)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import UserError
from .guard import NonFiniteGuard

HEAD_PREFIX = "classifier."  # MobileNetV4's (and the supernet's) classifier


def param_groups(model: nn.Module, weight_decay: float, lr: float, body_lr_scale: float = 1.0) -> list[dict]:
    """Groups without weight decay on 1-D tensors (BN weights/biases, conv/linear biases, layer-scale gammas); the
    classifier at ``lr``, the rest at ``lr * body_lr_scale`` (fine-tuning). ``'l2'`` marks the groups that coupled L2
    applies to (``Optimization.build`` pops it before the groups reach the optimiser). Order: no-decay groups first,
    then by body / head."""
    groups: dict[tuple[bool, bool], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decay = p.ndim > 1 and not name.endswith((".bias", ".gamma"))
        head = name.startswith(HEAD_PREFIX)
        groups.setdefault((decay, head), []).append(p)
    return [
        {"params": params, "weight_decay": weight_decay if decay else 0.0,
         "lr": lr * (1.0 if head else body_lr_scale), "l2": decay}
        for (decay, head), params in sorted(groups.items())
    ]


@dataclass(frozen=True)
class OptimizerSettings:
    """What builds an optimiser: its name, peak LR, weight decay (decoupled for AdamW, L2 in the gradient for the
    others) and its constants."""

    name: str = "adamw"
    lr: float = 2e-3
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    momentum: float = 0.9  # sgd
    body_lr_scale: float = 1.0


def _adamw(groups, s: OptimizerSettings, fused: bool) -> torch.optim.Optimizer:
    return torch.optim.AdamW(groups, lr=s.lr, betas=s.betas, eps=s.eps, weight_decay=s.weight_decay, fused=fused)


def _adam(groups, s: OptimizerSettings, fused: bool) -> torch.optim.Optimizer:  # the MNv4 paper's detection "Adam, L2"
    return torch.optim.Adam(groups, lr=s.lr, betas=s.betas, eps=s.eps, fused=fused)


def _sgd(groups, s: OptimizerSettings, fused: bool) -> torch.optim.Optimizer:
    return torch.optim.SGD(groups, lr=s.lr, momentum=s.momentum)


def _rmsprop(groups, s: OptimizerSettings, fused: bool) -> torch.optim.Optimizer:
    # TuNAS's supernet optimiser: decay 0.9, momentum 0.9, epsilon 1.0 (PyTorch's eps sits outside the square root)
    return torch.optim.RMSprop(groups, lr=s.lr, alpha=0.9, momentum=0.9, eps=1.0)


OPTIMIZERS: dict[str, Callable[[list, OptimizerSettings, bool], torch.optim.Optimizer]] = {
    "adamw": _adamw,
    "adam": _adam,
    "sgd": _sgd,
    "rmsprop": _rmsprop,
}


class WarmupCosine:
    """LR factor: linear warm-up 0 -> 1 over ``warmup`` steps, then cosine 1 -> ``alpha`` at ``total`` steps."""

    def __init__(self, warmup: int, total: int, alpha: float):
        self.warmup, self.total, self.alpha = warmup, total, alpha

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        progress = min((step - self.warmup) / max(self.total - self.warmup, 1), 1.0)
        return self.alpha + (1 - self.alpha) * 0.5 * (1 + math.cos(math.pi * progress))


class WarmupPoly(WarmupCosine):
    """LR factor: linear warm-up 0 -> 1 over ``warmup`` steps, then ``(1 - progress) ** power`` from 1 to ``alpha``
    at ``total`` steps: DeepLab's "poly" policy, which torchvision's segmentation reference applies per step with
    power 0.9 and no warm-up (``LambdaLR(lambda x: (1 - x / total_steps) ** 0.9)``)."""

    power = 0.9

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        progress = min((step - self.warmup) / max(self.total - self.warmup, 1), 1.0)
        return self.alpha + (1 - self.alpha) * (1 - progress) ** self.power


# LR schedules by name: factor(step) of the peak LR over the run's steps
SCHEDULES: dict[str, type[WarmupCosine]] = {"cosine": WarmupCosine, "poly": WarmupPoly}


@dataclass
class Optimization:
    """The optimiser (fused on CUDA where it has a fused kernel), its LR schedule (``SCHEDULES``: warm-up + cosine
    unless ``schedule`` names another), the fp16 grad scaler, clipping and the parameters coupled L2 applies to."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    l2_params: list[nn.Parameter]
    l2: float = 0.0
    grad_clip: float | None = None

    @classmethod
    def build(
        cls,
        model: nn.Module,
        settings: OptimizerSettings,
        device: torch.device,
        warmup_steps: int,
        schedule_steps: int,
        min_lr_fraction: float = 0.0,
        precision: str = "fp32",
        l2: float = 0.0,
        grad_clip: float | None = None,
        schedule: str = "cosine",
    ) -> Optimization:
        if settings.name not in OPTIMIZERS:
            raise UserError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {settings.name!r}")
        if schedule not in SCHEDULES:
            raise UserError(f"lr schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
        groups = param_groups(model, settings.weight_decay, settings.lr, settings.body_lr_scale)
        l2_params = [p for g in groups if g.pop("l2") for p in g["params"]]
        fused = device.type == "cuda" and settings.name in ("adamw", "adam")
        optimizer = OPTIMIZERS[settings.name](groups, settings, fused)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, SCHEDULES[schedule](warmup_steps, schedule_steps, min_lr_fraction)
        )
        scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
        return cls(optimizer, scheduler, scaler, l2_params, l2, grad_clip)

    @property
    def fused(self) -> bool:
        return bool(self.optimizer.defaults.get("fused"))

    def step(self, model: nn.Module, guard: NonFiniteGuard) -> None:
        """Coupled L2 (TF's ``l2_weight_decay``: grad += l2 * w on the decayed weights), clipping, the update
        (skipped by the guard after a non-finite value), the schedule."""
        if self.grad_clip or self.l2:
            self.scaler.unscale_(self.optimizer)
        if self.l2:
            with_grad = [p for p in self.l2_params if p.grad is not None]
            torch._foreach_add_([p.grad for p in with_grad], with_grad, alpha=self.l2)
        if self.grad_clip:
            norm = nn.utils.clip_grad_norm_(model.parameters(), self.grad_clip)
            if not self.scaler.is_enabled():  # with fp16, inf gradients are the scaler's business (skip + rescale)
                guard.observe("gradients", norm)
        guard.before_update(self.optimizer, self.scaler)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()

    @property
    def lr(self) -> float:
        return self.scheduler.get_last_lr()[-1]

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict()}

    def load_state_dict(self, ckpt: dict) -> None:
        """The optimiser, schedule and scaler of a checkpoint (``scaler`` may be absent: runs that had none)."""
        load_optimizer_state(self.optimizer, ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt.get("scaler") is not None:
            self.scaler.load_state_dict(ckpt["scaler"])


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """``optimizer.load_state_dict(state)``, also when ``state`` lists the same parameter groups in another order.

    Groups are matched by their size and weight decay (two groups with both equal hold parameters in the model's
    order either way). Detection checkpoints written before the run machinery was shared put the decayed group
    first; today's ``param_groups`` puts it last."""
    ours = optimizer.state_dict()["param_groups"]
    theirs = state["param_groups"]
    signature = [(len(g["params"]), g.get("weight_decay", 0.0)) for g in theirs]
    wanted = [(len(g["params"]), g.get("weight_decay", 0.0)) for g in ours]
    if signature == wanted or sorted(signature) != sorted(wanted):  # same order, or not ours at all: torch decides
        optimizer.load_state_dict(state)
        return
    order, free = [], list(range(len(theirs)))
    for sig in wanted:  # for each of our groups, the first unused saved group with its signature
        j = next(j for j in free if signature[j] == sig)
        free.remove(j)
        order.append(j)
    groups, new_state, next_id = [], {}, 0
    for j in order:
        group = dict(theirs[j])
        ids = []
        for old_id in group["params"]:
            if old_id in state["state"]:
                new_state[next_id] = state["state"][old_id]
            ids.append(next_id)
            next_id += 1
        group["params"] = ids
        groups.append(group)
    optimizer.load_state_dict({"state": new_state, "param_groups": groups})
