"""Defaults that fit a small data set and the device (classification's: a recipe sets them for ImageNet).

Without a recipe the global batch and the warm-up are left to ``fit_to_data``: a recipe's batch (4096 for
Conv-S) on a data set of a thousand images makes a handful of optimiser steps and learns nothing. The fitted batch is
the largest power of two up to 256 that still gives ``MIN_STEPS_PER_EPOCH`` steps per epoch
(``mnv4.engine.plan.fitted_global_batch``); the warm-up is a tenth of the schedule, at most one epoch. With gradient
clipping (on by default) this trains from scratch on small data (docs/train.md, "Small data sets"). ``fit_to_device``
likewise fills the engine settings left open: the throughput settings on CUDA, plain fp32 eager on the CPU.
"""

from __future__ import annotations

import dataclasses

import torch

from ..engine.device import device_defaults
from ..engine.plan import fitted_global_batch
from .config import TrainConfig


def fit_to_data(cfg: TrainConfig, num_samples: int, world_size: int = 1) -> tuple[TrainConfig, list[str]]:
    """``cfg`` with ``global_batch`` / ``warmup_epochs`` left at ``None`` filled for this data set, and one note
    per filled value for the run's first log lines."""
    notes, values = [], {}
    if cfg.global_batch is None:
        batch = fitted_global_batch(num_samples, world_size)
        values["global_batch"] = batch
        notes.append(f"global batch {batch} ({num_samples // batch} steps per epoch; --global-batch N to choose)")
    if cfg.warmup_epochs is None:
        values["warmup_epochs"] = min(1.0, cfg.epochs / 10)
        notes.append(f"warm-up {values['warmup_epochs']:g} epochs (a tenth of the run, at most 1; --warmup-epochs)")
    return dataclasses.replace(cfg, **values), notes


def fit_to_device(cfg: TrainConfig, device: torch.device) -> tuple[TrainConfig, list[str]]:
    """``cfg`` with ``precision`` / ``channels_last`` / ``compile`` left at ``None`` set for ``device``
    (``mnv4.engine.device.device_defaults``), and a note for the run's first lines."""
    return device_defaults(cfg, device, ("precision", "channels_last", "compile"))

