"""``RunConfig``: the settings every run shares (classification training, detection training, the search), and one
check of every config's fields.

Each run's config (``TrainConfig``, ``DetectConfig``, ``SearchConfig``, ``SegmentConfig``) is a dataclass deriving
from ``RunConfig``: it redeclares a shared field where its default differs, adds its own, and lists the numeric
ranges of its fields in ``RANGES``. ``check_fields`` then refuses, in one line each and before any work, a value of
the wrong type (a recipe or ``--set`` value), a NaN or infinite number, and a number outside its range; a config's
own ``check`` adds the rules between fields.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any, ClassVar

from ..errors import UserError
from ..specs import MIN_INPUT_SIZE


@dataclass(frozen=True)
class Range:
    """An interval of allowed values: ``low`` / ``high`` (None: unbounded), open or closed at each end."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return not (self.high is not None and (value >= self.high if self.high_open else value > self.high))

    def __str__(self) -> str:
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        if self.low is None:
            return f"{'<' if self.high_open else '<='} {self.high:g}"
        return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"


POSITIVE = Range(0, low_open=True)
NON_NEGATIVE = Range(0)
AT_LEAST_ONE = Range(1)
FRACTION = Range(0, 1)  # [0, 1]: probabilities, rates
OPEN_FRACTION = Range(0, 1, low_open=True)  # (0, 1]: crop fractions
BELOW_ONE = Range(0, 1, high_open=True)  # [0, 1): decays, momenta

DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")


@dataclass
class RunConfig:
    """Where a run writes, how long it trains, its batch and learning rate, and its engine settings (device, worker
    processes, seed, checkpoints, logs). ``None`` in a subclass's field means "fitted when the run starts"."""

    out: str = "runs/train"
    epochs: float = 10
    global_batch: int | None = None  # the optimiser batch over all processes
    lr: float = 2e-3
    weight_decay: float = 0.05
    grad_clip: float | None = 1.0  # max global gradient norm; None or 0: no clipping
    device: str = "auto"  # 'auto' = cuda if available else cpu
    workers: int = 4  # data-loader worker processes per rank
    threads: int | None = None  # torch.set_num_threads
    seed: int = 0
    resume: str | None = None  # a checkpoint file, or 'auto' for the newest in ``out`` (a new run if none)
    save_every_steps: int = 0  # 0: at the end of each epoch only
    keep_last: int = 3
    log_every: int = 20
    progress: bool = True
    tensorboard: bool = True  # TensorBoard scalars next to the CSV logs

    RANGES: ClassVar[dict[str, Range]] = {
        "epochs": POSITIVE,
        "global_batch": AT_LEAST_ONE,
        "lr": POSITIVE,
        "weight_decay": NON_NEGATIVE,
        "grad_clip": NON_NEGATIVE,
        "workers": NON_NEGATIVE,
        "threads": AT_LEAST_ONE,
        "seed": NON_NEGATIVE,
        "save_every_steps": NON_NEGATIVE,
        "keep_last": AT_LEAST_ONE,
        "log_every": AT_LEAST_ONE,
    }

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Every field's type, finiteness and range, then the rules between fields (``check``)."""
        check_fields(self)
        ensure(DEVICE_PATTERN.fullmatch(self.device) is not None,
               f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")
        ensure(bool(self.out.strip()), "out (the output folder) must not be empty")
        self.check()

    def check(self) -> None:
        """Rules between fields (a subclass's own); ``validate`` has already checked each field alone."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def fields(cls) -> dict[str, dataclasses.Field]:
        return {f.name: f for f in dataclasses.fields(cls)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]):
        """A config stored in a checkpoint or read from TOML: keys of other versions dropped, lists of tuple fields
        made tuples again."""
        fields = cls.fields()
        known = {k: v for k, v in values.items() if k in fields}
        return cls(**{k: tuple(v) if isinstance(v, list) and "tuple" in str(fields[k].type) else v
                      for k, v in known.items()})


def ensure(ok: bool, message: str) -> None:
    """A ``UserError`` with ``message`` unless ``ok``."""
    if not ok:
        raise UserError(message)


def check_fields(cfg) -> None:
    """Each field of the dataclass ``cfg`` against its annotation (``'float | None'``: ints pass as floats, bools are
    not numbers), every number finite, and the numbers ``cfg.RANGES`` names inside their range."""
    ranges = getattr(cfg, "RANGES", {})
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        ensure(has_type(value, str(f.type)), f"{f.name} must be {f.type}, got {value!r}")
        numbers = value if isinstance(value, tuple) else (value,)
        for number in numbers:
            if isinstance(number, float):
                ensure(math.isfinite(number), f"{f.name} must be a finite number, got {value!r}")
        allowed = ranges.get(f.name)
        if allowed is not None and is_number(value):
            ensure(value in allowed, f"{f.name} must be {allowed}, got {value!r}")


def is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def has_type(value: Any, annotation: str) -> bool:
    """``value`` fits a field annotation such as ``'float | None'`` or ``'tuple[float, float, float] | None'``."""
    for kind in annotation.replace(" ", "").split("|"):
        if kind == "None" and value is None:
            return True
        if kind == "bool" and isinstance(value, bool):
            return True
        if kind == "str" and isinstance(value, str):
            return True
        if kind in ("int", "float") and isinstance(value, int) and not isinstance(value, bool):
            return True
        if kind == "float" and isinstance(value, float):
            return True
        if kind.startswith("tuple") and isinstance(value, tuple):
            return all(is_number(v) for v in value)
    return False


PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass
class SupervisedConfig(RunConfig):
    """The settings a supervised training run (classification, detection, segmentation) adds to ``RunConfig``: the
    starting weights, the batch split and schedule, AdamW's constants, the EMA, stochastic depth, the shared
    augmentations, and the engine's numerics."""

    pretrained: str | bool = False  # True (the default tag's weights) or a weights file
    image_size: int | None = None  # None: the model's native resolution
    batch_size: int | None = None  # per process and per micro-step; None = global_batch / world size
    max_steps: int | None = None  # stop after this many optimiser steps (smoke runs); the schedule spans the epochs
    warmup_epochs: float | None = None  # linear LR warm-up
    min_lr_fraction: float = 0.0  # cosine decay "alpha": the final LR as a fraction of the peak
    beta1: float = 0.9
    beta2: float = 0.999
    adam_eps: float = 1e-8
    drop_path: float = 0.0  # peak stochastic-depth rate
    ema_decay: float | None = None  # None/0: no EMA
    ema_start_epochs: float = 0.0  # the EMA starts (as a copy of the model) after this many epochs
    hflip: bool = True
    randaug_layers: int = 0
    randaug_magnitude: float = 9.0  # TF scale 0..10
    randaug_prob: float = 1.0  # probability to apply each of the randaug_layers ops (TF ``prob_to_apply``)
    precision: str | None = None  # fp32, bf16 or fp16 autocast; None: fitted to the device
    sync_bn: bool = False
    deterministic: bool = False  # torch.use_deterministic_algorithms(True) (bit-exact CPU runs)

    RANGES: ClassVar[dict[str, Range]] = {
        **RunConfig.RANGES,
        "image_size": Range(MIN_INPUT_SIZE),
        "batch_size": AT_LEAST_ONE,
        "max_steps": AT_LEAST_ONE,
        "warmup_epochs": NON_NEGATIVE,
        "min_lr_fraction": FRACTION,
        "beta1": BELOW_ONE,
        "beta2": BELOW_ONE,
        "adam_eps": POSITIVE,
        "drop_path": BELOW_ONE,
        "ema_decay": BELOW_ONE,
        "ema_start_epochs": NON_NEGATIVE,
        "randaug_layers": NON_NEGATIVE,
        "randaug_magnitude": NON_NEGATIVE,
        "randaug_prob": FRACTION,
    }

    def validate(self) -> None:
        super().validate()
        ensure(self.precision in (None, *PRECISIONS), f"precision must be one of {PRECISIONS}, got {self.precision!r}")
