"""The timing loop: warm-up, then many timed runs of one forward pass; robust statistics of the steady state."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Timing:
    median_ms: float
    p90_ms: float
    mean_ms: float
    min_ms: float
    runs: int

    @classmethod
    def from_samples(cls, samples_s: list[float]) -> Timing:
        if not samples_s:
            raise ValueError("no timed runs")
        ms = np.asarray(samples_s, dtype=np.float64) * 1e3
        return cls(float(np.median(ms)), float(np.percentile(ms, 90)), float(ms.mean()), float(ms.min()), len(ms))


def time_callable(
    fn: Callable[[], object],
    warmup: int,
    runs: int,
    sync: Callable[[], None] | None = None,
    on_run: Callable[[], None] | None = None,
) -> Timing:
    """Call ``fn`` ``warmup`` times untimed, then ``runs`` times, each timed alone (wall clock, perf_counter).

    ``sync`` waits for asynchronous work (CUDA) before each clock read. Medians and p90 rather than means: a
    shared machine's outliers inflate means but barely move medians.
    """
    if warmup < 0 or runs < 1:
        raise ValueError(f"need warmup >= 0 and runs >= 1, got warmup={warmup}, runs={runs}")
    sync = sync or (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        sync()
        samples.append(time.perf_counter() - start)
        if on_run:
            on_run()
    return Timing.from_samples(samples)
