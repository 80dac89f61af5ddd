"""The optimiser side of a run: AdamW parameter groups, the warm-up + cosine schedule, and one optimiser step
(coupled L2, clipping, AMP scaling)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .config import TrainConfig
from .guard import NonFiniteGuard


def param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict]:
    """AdamW groups: no weight decay on 1-D tensors (BN weights/biases, conv/linear biases, layer-scale gammas);
    the classifier at ``lr``, the rest at ``lr * backbone_lr_scale``. ``'l2'`` marks the groups that coupled L2
    applies to (popped before the groups reach the optimiser)."""
    groups: dict[tuple[bool, bool], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decay = p.ndim > 1 and not name.endswith((".bias", ".gamma"))
        head = name.startswith("classifier.")
        groups.setdefault((decay, head), []).append(p)
    return [
        {
            "params": params,
            "weight_decay": cfg.weight_decay if decay else 0.0,
            "lr": cfg.lr * (1.0 if head else cfg.backbone_lr_scale),
            "l2": decay,
        }
        for (decay, head), params in sorted(groups.items())
    ]


class WarmupCosine:
    """LR factor: linear warm-up 0 -> 1 over ``warmup`` steps, then cosine 1 -> ``alpha`` at ``total`` steps."""

    def __init__(self, warmup: int, total: int, alpha: float):
        self.warmup, self.total, self.alpha = warmup, total, alpha

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        progress = min((step - self.warmup) / max(self.total - self.warmup, 1), 1.0)
        return self.alpha + (1 - self.alpha) * 0.5 * (1 + math.cos(math.pi * progress))


@dataclass
class Optimization:
    """AdamW (fused on CUDA), its LR schedule, the fp16 grad scaler, and the parameters coupled L2 applies to."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    l2_params: list[nn.Parameter]

    @classmethod
    def build(
        cls, model: nn.Module, cfg: TrainConfig, device: torch.device, warmup_steps: int, schedule_steps: int
    ) -> Optimization:
        groups = param_groups(model, cfg)
        l2_params = [p for g in groups if g.pop("l2") for p in g["params"]]
        optimizer = torch.optim.AdamW(
            groups,
            lr=cfg.lr,
            betas=(cfg.beta1, cfg.beta2),
            eps=cfg.adam_eps,
            weight_decay=cfg.weight_decay,
            fused=device.type == "cuda",
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, WarmupCosine(warmup_steps, schedule_steps, cfg.min_lr_fraction)
        )
        scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
        return cls(optimizer, scheduler, scaler, l2_params)

    def step(self, model: nn.Module, cfg: TrainConfig, guard: NonFiniteGuard) -> None:
        """Coupled L2 (TF's ``l2_weight_decay``: grad += l2 * w on the decayed weights), clipping, the AdamW
        step (skipped by the guard after a non-finite value), the schedule."""
        if cfg.grad_clip or cfg.l2:
            self.scaler.unscale_(self.optimizer)
        if cfg.l2:
            with_grad = [p for p in self.l2_params if p.grad is not None]
            torch._foreach_add_([p.grad for p in with_grad], with_grad, alpha=cfg.l2)
        if cfg.grad_clip:
            norm = nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
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
