"""``SearchConfig``: every setting of an architecture search (``mnv4 search`` flags map onto its fields).

Defaults follow TuNAS's released code where the MNv4 paper is silent (its ``mobile_architecture_search.py`` flags,
see ``controller.py``); the supernet optimiser defaults to this package's AdamW recipe rather than TuNAS's RMSProp
(both are available), because short CPU/GPU proxy searches converge more reliably with it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from ..errors import UserError
from ..roofline import BYTES_PER_ELEMENT, NAMED_PROFILES
from ..specs import MIN_INPUT_SIZE
from .controller import REWARDS

STAGES = ("coarse", "fine", "both")
OPTIMIZERS = ("adamw", "rmsprop")
QUALITY_BN = ("batch", "running")
COSTS = ("roofline", "latency-table")


@dataclass
class SearchConfig:
    """One search. ``target`` (T0) is in the cost model's unit (roofline: effective MACs = ModelTime x PeakMACs at
    the ridge point); or give ``target_model`` and T0 = its cost x ``target_scale``."""

    # what and where
    space: str = "conv_small"  # a named search space (mnv4.nas.SPACES)
    data: str = ""  # ImageFolder root with train/<class>/* (a held-out part of train/ scores the architectures)
    out: str = "runs/search"
    name: str = ""  # name of the found architecture (default mnv4_nas_<space>)
    stage: str = "both"  # 'coarse' (widths, depths), 'fine' (DW slots, expansions) or 'both' (coarse, then fine)
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

    # supernet training
    image_size: int | None = None  # training resolution (default: the cost resolution)
    epochs: float = 10.0  # per stage
    steps: int | None = None  # per stage, instead of epochs
    global_batch: int = 256
    optimizer: str = "adamw"
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_fraction: float = 0.025  # linear LR warm-up, fraction of the stage's steps (TuNAS: 2.5%)
    label_smoothing: float = 0.1
    grad_clip: float | None = 1.0
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

    # engine, checkpoints
    device: str = "auto"
    workers: int = 2
    threads: int | None = None
    seed: int = 0
    resume: str | None = None  # a checkpoint, or 'auto' for the newest in ``out``
    save_every_steps: int = 0  # 0: at the end of each stage only
    keep_last: int = 3
    stop_after: int | None = None  # stop after this many steps in all (the schedules still span the whole search)
    log_every: int = 20
    progress: bool = True
    plot: bool = True

    def __post_init__(self) -> None:
        self.mean, self.std = tuple(self.mean), tuple(self.std)
        self.validate()

    def validate(self) -> None:
        from .space import get_space

        def check(ok: bool, msg: str) -> None:
            if not ok:
                raise UserError(msg)

        get_space(self.space)
        check(self.stage in STAGES, f"stage must be one of {', '.join(STAGES)}, got {self.stage!r}")
        check(self.base is None or self.stage == "fine",
              "base (the widths/depths to keep) only applies to stage 'fine'")
        check(self.cost in COSTS, f"cost must be one of {', '.join(COSTS)}, got {self.cost!r}")
        self.ridge_point_value()
        check(self.precision in BYTES_PER_ELEMENT,
              f"precision must be one of {', '.join(BYTES_PER_ELEMENT)}, got {self.precision!r}")
        check(self.reward in REWARDS, f"reward must be one of {', '.join(REWARDS)}, got {self.reward!r}")
        check(_finite(self.beta) and self.beta < 0,
              f"beta must be < 0 (it penalises missing the target), got {self.beta!r}; TuNAS uses -0.1")
        check((self.target is None) != (self.target_model is None),
              "give the cost target T0 as a number (target) or as a model (target_model), exactly one of them")
        check(self.target is None or (_finite(self.target) and self.target > 0),
              f"the cost target T0 must be > 0, got {self.target!r}")
        check(_finite(self.target_scale) and self.target_scale > 0,
              f"target_scale must be > 0, got {self.target_scale}")
        for name in ("resolution", "image_size"):
            value = getattr(self, name)
            check(value is None or value >= MIN_INPUT_SIZE, f"{name} must be >= {MIN_INPUT_SIZE}, got {value}")
        check(self.epochs > 0, f"epochs must be > 0, got {self.epochs}")
        check(self.steps is None or self.steps >= 1, f"steps must be >= 1, got {self.steps}")
        check(self.global_batch >= 2, f"global_batch must be >= 2 (the head's BatchNorm), got {self.global_batch}")
        check(self.optimizer in OPTIMIZERS, f"optimizer must be one of {', '.join(OPTIMIZERS)}")
        check(self.quality_bn in QUALITY_BN, f"quality_bn must be one of {', '.join(QUALITY_BN)}")
        check(self.lr > 0 and (self.rl_lr is None or self.rl_lr > 0), "lr and rl_lr must be > 0")
        for name in ("warmup_fraction", "label_smoothing", "dropout", "rl_delay_fraction", "arch_warmup_fraction",
                     "randaug_prob"):
            value = getattr(self, name)
            check(0 <= value <= 1, f"{name} must be in [0, 1], got {value}")
        check(0 < self.holdout_fraction < 1, f"holdout_fraction must be in (0, 1), got {self.holdout_fraction}")
        check(0 <= self.baseline_momentum < 1, f"baseline_momentum must be in [0, 1), got {self.baseline_momentum}")
        check(self.rl_batch_multiplier > 0 and self.rl_lr_ramp >= 1, "rl_batch_multiplier > 0, rl_lr_ramp >= 1")
        # TuNAS: the controller must not learn while the supernet still runs warm-up architectures
        check(self.arch_warmup_fraction <= self.rl_delay_fraction,
              f"arch_warmup_fraction ({self.arch_warmup_fraction}) must be <= rl_delay_fraction "
              f"({self.rl_delay_fraction}): the controller would learn from warm-up architectures")
        check(self.fix_expansion is None or (_finite(self.fix_expansion) and self.fix_expansion > 0),
              "fix_expansion must be a positive number")
        check(self.kd_temperature > 0, "kd_temperature must be > 0")
        check(self.workers >= 0 and self.keep_last >= 1 and self.save_every_steps >= 0 and self.log_every >= 1,
              "workers >= 0, keep_last >= 1, save_every_steps >= 0 and log_every >= 1")
        check(self.stop_after is None or self.stop_after >= 1, "stop_after must be >= 1")
        check(0 < self.crop_scale_min <= 1 and 0 < self.crop_pct <= 1, "crop_scale_min and crop_pct in (0, 1]")

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

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def train_config(self):
        """The ``TrainConfig`` holding this search's data and augmentation settings, for the training machinery
        (transforms, soft-label checks, parameter groups)."""
        from ..train.config import TrainConfig

        return TrainConfig(
            seed=self.seed, lr=self.lr, weight_decay=self.weight_decay, label_smoothing=self.label_smoothing,
            crop_scale_min=self.crop_scale_min, val_crop_pct=self.crop_pct, hflip=self.hflip,
            randaug_layers=self.randaug_layers, randaug_magnitude=self.randaug_magnitude,
            randaug_prob=self.randaug_prob, mean=self.mean, std=self.std, kd_temperature=self.kd_temperature,
            workers=self.workers, global_batch=self.global_batch,
        )


# Settings that do not change what a search computes: a resumed run may differ in them.
RESUME_FREE = ("data", "out", "resume", "stop_after", "workers", "threads", "progress", "plot", "log_every",
               "save_every_steps", "keep_last", "device")


def config_from_dict(values: dict[str, Any]) -> SearchConfig:
    known = {f.name for f in dataclasses.fields(SearchConfig)}
    return SearchConfig(**{k: v for k, v in values.items() if k in known})


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
