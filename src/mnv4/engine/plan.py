"""A run's step arithmetic: ``RunPlan`` turns the config and the size of the training set into optimiser steps —
micro-batch size, gradient accumulation, steps per epoch, warm-up, when the EMA starts — and refuses what cannot work
with one error that names the flags to change. ``fitted_global_batch`` is the batch that suits a small data set
(``mnv4.train.plan.fit_to_data`` uses it when no recipe sets one)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import UserError

DEFAULT_GLOBAL_BATCH = 256
MIN_FITTED_BATCH = 8
MIN_STEPS_PER_EPOCH = 30
MIN_TOTAL_STEPS = 100  # fewer optimiser steps than this: a model trained from scratch learns little; say so


def fitted_global_batch(num_samples: int, world_size: int = 1) -> int:
    """The largest power of two <= 256 with >= ``MIN_STEPS_PER_EPOCH`` steps per epoch (at least 8, at most the
    data set), rounded down to a multiple of the number of processes."""
    batch = DEFAULT_GLOBAL_BATCH
    while batch > MIN_FITTED_BATCH and num_samples // batch < MIN_STEPS_PER_EPOCH:
        batch //= 2
    while batch > 1 and batch > num_samples:
        batch //= 2
    return max(world_size, batch - batch % world_size)


@dataclass(frozen=True)
class RunPlan:
    """Optimiser steps of a run. Step ``s`` takes the global batch ``perm[s*B:(s+1)*B]`` of the epoch's permutation
    (incomplete last batches are dropped), as ``world_size`` processes x ``accum`` micro-batches of ``batch_size``."""

    num_samples: int
    global_batch: int
    batch_size: int
    accum: int
    world_size: int
    steps_per_epoch: int
    schedule_steps: int  # the LR schedule always spans cfg.epochs
    total_steps: int  # = schedule_steps, or fewer with max_steps
    warmup_steps: int
    ema_start_step: int

    @classmethod
    def build(cls, cfg, num_samples: int, world_size: int) -> RunPlan:
        """The plan of a ``SupervisedConfig`` whose ``global_batch`` and ``warmup_epochs`` are set."""
        batch_size = cfg.batch_size or cfg.global_batch // world_size
        accum = cfg.global_batch // (batch_size * world_size)
        if accum < 1 or accum * batch_size * world_size != cfg.global_batch:
            raise UserError(
                f"global batch {cfg.global_batch} must be batch_size {batch_size} x {world_size} processes x an "
                "integer number of accumulation steps; change --batch-size or --global-batch"
            )
        steps_per_epoch = num_samples // cfg.global_batch
        if steps_per_epoch == 0:
            raise UserError(
                f"global batch {cfg.global_batch} exceeds the {num_samples} training images: pass --global-batch "
                f"{fitted_global_batch(num_samples, world_size)} (fitted to this data set), or leave --global-batch "
                "and --recipe out to have it fitted"
            )
        schedule_steps = max(1, math.ceil(cfg.epochs * steps_per_epoch))
        return cls(
            num_samples=num_samples,
            global_batch=cfg.global_batch,
            batch_size=batch_size,
            accum=accum,
            world_size=world_size,
            steps_per_epoch=steps_per_epoch,
            schedule_steps=schedule_steps,
            total_steps=min(schedule_steps, cfg.max_steps) if cfg.max_steps else schedule_steps,
            warmup_steps=round(cfg.warmup_epochs * steps_per_epoch),
            ema_start_step=round(cfg.ema_start_epochs * steps_per_epoch),
        )

    def describe(self) -> str:
        return (
            f"{self.total_steps} optimiser steps ({self.steps_per_epoch} per epoch) of {self.global_batch} images "
            f"(= {self.batch_size}/process x {self.world_size} processes x {self.accum} accumulation), "
            f"{self.warmup_steps} warm-up steps"
        )

    def too_short(self) -> str | None:
        """A warning when the schedule is too short to learn from scratch, naming what to change."""
        if self.schedule_steps >= MIN_TOTAL_STEPS:
            return None
        fitted = fitted_global_batch(self.num_samples, self.world_size)
        if fitted < self.global_batch:
            advice = (
                f"pass --global-batch {fitted} ({self.num_samples // fitted} steps per epoch, fitted to this data set; "
                "leaving --global-batch and --recipe out does this), or train for more --epochs"
            )
        else:
            advice = "train for more --epochs"
        return (
            f"this schedule makes only {self.schedule_steps} optimiser steps ({self.steps_per_epoch} per epoch of "
            f"{self.global_batch} images out of {self.num_samples}): a model trained from scratch learns little in so "
            f"few. To fix: {advice}"
        )
