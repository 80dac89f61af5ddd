"""``SearchConfig``: every setting of an architecture search (``mnv4 search`` flags map onto its fields).

Defaults follow TuNAS's released code where the MNv4 paper is silent (its ``mobile_architecture_search.py`` flags,
see ``controller.py``); the supernet optimiser defaults to this package's AdamW recipe rather than TuNAS's RMSProp
(both are available), because short CPU/GPU proxy searches converge more reliably with it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

from ..engine.config import (
    AT_LEAST_ONE,
    BELOW_ONE,
    FRACTION,
    NON_NEGATIVE,
    OPEN_FRACTION,
    POSITIVE,
    Range,
    RunConfig,
    ensure,
)
from ..errors import UserError
from ..roofline import BYTES_PER_ELEMENT, NAMED_PROFILES
from ..specs import MIN_INPUT_SIZE, check_spec_name
from .controller import REWARDS

STAGES = ("coarse", "fine", "both", "joint")
OPTIMIZERS = ("adamw", "rmsprop")
QUALITY_BN = ("batch", "running")
COSTS = ("roofline", "latency-table")


@dataclass
class SearchConfig(RunConfig):
    """One search. ``target`` (T0) is in the cost model's unit (roofline: effective MACs = ModelTime x PeakMACs at
    the ridge point); or give ``target_model`` and T0 = its cost x ``target_scale``. The fields every run shares
    (output folder, epochs, batch, LR, engine, checkpoints) are ``RunConfig``'s (``mnv4.engine.config``)."""

    # what and where
    space: str = "conv_small"  # a named search space (mnv4.nas.SPACES)
    data: str = ""  # ImageFolder root with train/<class>/* (a held-out part of train/ scores the architectures)
    out: str = "runs/search"
    name: str = ""  # name of the found architecture (default mnv4_nas_<space>)
    # 'coarse' (widths, depths), 'fine' (DW slots, expansions), 'both' (coarse, then fine: the paper's) or 'joint'
    # (every decision in one stage: TuNAS's single-stage search)
    stage: str = "both"
    base: str | None = None  # 'fine' alone: the architecture whose widths/depths stay (variant or spec file)
    fix_expansion: float | None = None  # the paper's fine stage keeps every expansion at 4; None searches them

    # cost and reward
    cost: str = "roofline"  # or 'latency-table': ONNX Runtime latency on this machine, per block (nas/cost.py)
    latency_table: str | None = None  # the table's JSON file (default: ~/.cache/mnv4/latency_tables.json)
    ridge_point: str | float = "pixel6-cpu"  # a profile name (mnv4 roofline) or a number in MACs/byte
    precision: str = "int8"  # bytes per element for the roofline
    target: float | None = None  # T0
    target_model: str | None = None  # T0 = cost of this variant / spec file x target_scale
    target_scale: float = 1.0
    resolution: int | None = None  # the input size the cost is taken at (default: the space's)
    reward: str = "abs"  # 'abs' (TuNAS), 'mnas' or 'mnas_hard' (MnasNet)
    beta: float = -0.1  # reward exponent / slope, < 0

    # supernet training (epochs: per stage)
    image_size: int | None = None  # training resolution (default: the cost resolution)
    steps: int | None = None  # per stage, instead of epochs
    global_batch: int = 256
    optimizer: str = "adamw"
    warmup_fraction: float = 0.025  # linear LR warm-up, fraction of the stage's steps (TuNAS: 2.5%)
    label_smoothing: float = 0.1
    dropout: float = 0.0
    soft_labels: str | None = None  # offline distillation: a file from `mnv4 train --precompute-soft-labels`
    kd_temperature: float = 1.0
    holdout_fraction: float = 0.1  # of train/, never trained on: the quality batches come from it
    quality_bn: str = "batch"  # BN statistics when scoring: of the quality batch, or the supernet's running ones

    # augmentation (a soft-label file is valid only with the settings it was made with)
    crop_scale_min: float = 0.08
    crop_pct: float = 0.875
    hflip: bool = True
    randaug_layers: int = 0
    randaug_magnitude: float = 9.0
    randaug_prob: float = 1.0
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    # controller (TuNAS defaults)
    rl_lr: float | None = None  # None: 3e-4 x global_batch / 256
    rl_batch_multiplier: float = 4.0  # quality batch = this x the per-process training batch
    baseline_momentum: float = 0.95
    rl_delay_fraction: float = 0.25
    rl_lr_ramp: float = 10.0
    arch_warmup_fraction: float = 0.25  # all ops on / largest filters, with probability falling from 1 to 0

    # engine, checkpoints (save_every_steps 0: at the end of each stage only)
    workers: int = 2
    stop_after: int | None = None  # stop after this many steps in all (the schedules still span the whole search)
    plot: bool = True
    tensorboard: bool = False

    RANGES: ClassVar[dict[str, Range]] = {
        **RunConfig.RANGES,
        "target_scale": POSITIVE,
        "resolution": Range(MIN_INPUT_SIZE),
        "image_size": Range(MIN_INPUT_SIZE),
        "steps": AT_LEAST_ONE,
        "global_batch": Range(2),  # the head's BatchNorm sits after pooling: one image has no batch statistics
        "warmup_fraction": FRACTION,
        "label_smoothing": FRACTION,
        "dropout": FRACTION,
        "kd_temperature": POSITIVE,
        "holdout_fraction": Range(0, 1, low_open=True, high_open=True),
        "crop_scale_min": OPEN_FRACTION,
        "crop_pct": OPEN_FRACTION,
        "randaug_layers": NON_NEGATIVE,
        "randaug_magnitude": NON_NEGATIVE,
        "randaug_prob": FRACTION,
        "rl_lr": POSITIVE,
        "rl_batch_multiplier": POSITIVE,
        "baseline_momentum": BELOW_ONE,
        "rl_delay_fraction": FRACTION,
        "rl_lr_ramp": Range(1),
        "arch_warmup_fraction": FRACTION,
        "fix_expansion": POSITIVE,
        "stop_after": AT_LEAST_ONE,
    }

    def __post_init__(self) -> None:
        self.mean, self.std = tuple(self.mean), tuple(self.std)
        super().__post_init__()

    def check(self) -> None:
        from .space import get_space

        get_space(self.space)
        ensure(self.stage in STAGES, f"stage must be one of {', '.join(STAGES)}, got {self.stage!r}")
        ensure(self.base is None or self.stage == "fine",
               "base (the widths/depths to keep) only applies to stage 'fine'")
        if self.name:  # checked now: the name is only used when the search is over
            check_spec_name(self.name, "name")
        ensure(self.cost in COSTS, f"cost must be one of {', '.join(COSTS)}, got {self.cost!r}")
        self.ridge_point_value()
        ensure(self.precision in BYTES_PER_ELEMENT,
               f"precision must be one of {', '.join(BYTES_PER_ELEMENT)}, got {self.precision!r}")
        ensure(self.reward in REWARDS, f"reward must be one of {', '.join(REWARDS)}, got {self.reward!r}")
        ensure(self.beta < 0, f"beta must be < 0 (it penalises missing the target), got {self.beta!r}; TuNAS uses -0.1")
        ensure((self.target is None) != (self.target_model is None),
               "give the cost target T0 as a number (target) or as a model (target_model), exactly one of them")
        ensure(self.target is None or self.target > 0, f"the cost target T0 must be > 0, got {self.target!r}")
        ensure(self.optimizer in OPTIMIZERS, f"optimizer must be one of {', '.join(OPTIMIZERS)}")
        ensure(self.quality_bn in QUALITY_BN, f"quality_bn must be one of {', '.join(QUALITY_BN)}")
        # TuNAS: the controller must not learn while the supernet still runs warm-up architectures
        ensure(self.arch_warmup_fraction <= self.rl_delay_fraction,
               f"arch_warmup_fraction ({self.arch_warmup_fraction}) must be <= rl_delay_fraction "
               f"({self.rl_delay_fraction}): the controller would learn from warm-up architectures")
        for name in ("mean", "std"):
            ensure(len(getattr(self, name)) == 3, f"{name} needs 3 values (R, G, B), got {getattr(self, name)}")
        ensure(min(self.std) > 0, f"std values must be > 0, got {self.std}")

    def ridge_point_value(self) -> float | str:
        """``ridge_point`` as a profile name or a number of MACs/byte (a ``UserError`` when it is neither)."""
        if isinstance(self.ridge_point, str) and self.ridge_point in NAMED_PROFILES:
            return self.ridge_point
        try:
            value = float(self.ridge_point)
        except (TypeError, ValueError):
            value = math.nan
        if not (math.isfinite(value) and value >= 0):
            raise UserError(f"unknown ridge point {self.ridge_point!r}: a profile name "
                            f"({', '.join(NAMED_PROFILES)}) or a number of MACs/byte >= 0")
        return value

    @property
    def stages(self) -> tuple[str, ...]:
        return ("coarse", "fine") if self.stage == "both" else (self.stage,)


# Settings that do not change what a search computes: a resumed run may differ in them.
RESUME_FREE = ("data", "out", "resume", "stop_after", "workers", "threads", "progress", "plot", "tensorboard",
               "log_every", "save_every_steps", "keep_last", "device")


def config_from_dict(values: dict[str, Any]) -> SearchConfig:
    return SearchConfig.from_dict(values)
