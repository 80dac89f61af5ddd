"""``run_benchmark``: every (model, backend, batch size) cell, timed with the same protocol (docs/bench.md,
"Protocol": fixed threads, warm-up, many timed runs, median and p90, setup timed apart)."""

from __future__ import annotations

import copy
import functools
import math
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TextIO

import torch

from ..errors import UserError
from ..specs import MIN_INPUT_SIZE
from .backends import Backend, NotApplicable, all_backends, resolve_backends
from .catalog import resolve_models
from .environment import capture_environment, default_threads
from .results import BenchRecord, BenchReport
from .timing import time_callable


@dataclass
class BenchConfig:
    models: Sequence[str] | None = None  # None: the five paper models + MobileNetV3-L/-S
    backends: Sequence[str] | None = None  # None: the default run's backends available here (all of them with full)
    full: bool = False  # with backends=None: also the slow-to-build backends (LiteRT, ExecuTorch, AOTInductor)
    threads: int | None = None  # None: one per physical core
    batch_size: int = 1
    warmup: int = 5
    runs: int = 50  # at most; fewer when a cell would exceed ``max_seconds``
    min_runs: int = 10
    max_seconds: float = 4.0  # timed seconds per cell (keeps the default run to a few minutes on 2 cores)
    resolution: int | None = None  # None: each model's paper resolution
    cuda_batch_sizes: Sequence[int] = field(default_factory=lambda: (1, 8, 32, 128))
    seed: int = 0

    @classmethod
    def quick(cls, **overrides) -> BenchConfig:
        """Tiny sizes and few runs: checks the whole pipeline in seconds (numbers not comparable to real runs)."""
        values = dict(warmup=1, runs=3, min_runs=1, max_seconds=1.0, resolution=64, cuda_batch_sizes=(1, 2))
        values.update(overrides)
        return cls(**values)

    def validate(self) -> BenchConfig:
        checks = [
            (self.threads is None or self.threads >= 1, f"--threads must be >= 1, got {self.threads}"),
            (self.batch_size >= 1, f"--batch-size must be >= 1, got {self.batch_size}"),
            (self.runs >= 1, f"--runs must be >= 1, got {self.runs}"),
            (self.warmup >= 0, f"--warmup must be >= 0, got {self.warmup}"),
            (0 < self.max_seconds < math.inf,
             f"the time budget per cell must be a finite number > 0 s, got {self.max_seconds}"),
            (
                self.resolution is None or self.resolution >= MIN_INPUT_SIZE,
                f"--resolution must be >= {MIN_INPUT_SIZE}, got {self.resolution}",
            ),
            (all(b >= 1 for b in self.cuda_batch_sizes), f"CUDA batch sizes must be >= 1: {self.cuda_batch_sizes}"),
            (not (self.full and self.backends), "--full runs every backend: leave out --backends, or drop --full"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(message)
        return self


# The duration estimate printed before a run: seconds on the reference machine, an idle 2-core AMD EPYC VM
# (docs/bench.md, "How long it takes"), averaged over the default models at their paper resolutions; each backend adds
# its own ``setup_s_estimate`` per model.
MODEL_S_ESTIMATE = 2.0  # per model: building it with trained-like BN statistics, counting its MACs
TIMED_SHARE = 0.5  # of the time budget per cell (--max-seconds): warm-up and timed runs; fast models stop sooner


def expected_seconds(config: BenchConfig, backends: Sequence[Backend]) -> float:
    """About how long ``run_benchmark`` takes with these backends, on the reference machine: a slower or busy CPU
    takes longer."""
    cells = sum((b.setup_s_estimate + TIMED_SHARE * config.max_seconds)
                * len(b.batch_sizes(config.batch_size, config.cuda_batch_sizes)) for b in backends)
    return len(resolve_models(config.models)) * (MODEL_S_ESTIMATE + cells)


def full_sweep_backends() -> list[Backend]:
    """What ``full=True`` measures on this machine, without importing any toolkit: the CUDA backends need a GPU."""
    return [b for b in all_backends() if b.device == "cpu" or torch.cuda.is_available()]


def _runs_within_budget(timing_probe_s: float, config: BenchConfig) -> int:
    if timing_probe_s <= 0:
        return config.runs
    fit = int(config.max_seconds / timing_probe_s)
    return max(min(config.min_runs, config.runs), min(config.runs, fit))


def run_benchmark(config: BenchConfig, progress: bool = True, progress_stream: TextIO | None = None) -> BenchReport:
    """Measure every requested model on every requested backend; one ``BenchRecord`` per cell.

    A backend that cannot run one model (export unsupported, conversion error) gets a 'failed' / 'n/a' record with
    the reason -- as the paper's Tab. 6 prints "Failed" -- and the run goes on; so does a model that cannot be built
    here (a spec file whose forward pass would not fit in memory): every cell of it fails with the reason.
    ``progress_stream``: where the progress bar goes (default stderr; ``mnv4 bench`` passes the real screen while
    the toolkits' log output is sent to a file).
    """
    from tqdm.auto import tqdm

    from ..analysis import count_params, profile_layers

    config.validate()
    entries = resolve_models(config.models)
    backends, skipped = resolve_backends(config.backends, config.full)
    threads = config.threads or default_threads()
    cells = [(e, b, bs) for e in entries for b in backends for bs in b.batch_sizes(config.batch_size,
                                                                                     config.cuda_batch_sizes)]
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    environment = capture_environment(threads)
    records: list[BenchRecord] = []
    bar = tqdm(total=len(cells), desc="bench", unit="cell", disable=not progress,
               file=progress_stream or sys.stderr, leave=True)
    try:
        with tempfile.TemporaryDirectory(prefix="mnv4-bench-") as tmp:
            for entry in entries:
                torch.manual_seed(config.seed)
                res = config.resolution or entry.resolution
                try:
                    model = entry.build(res)
                except UserError as err:
                    model, macs, params, failure = None, None, None, f"not built: {err}"
                else:
                    macs = sum(r.macs for r in profile_layers(model, (res, res)))
                    params, failure = count_params(model), None
                for backend in backends:
                    for batch in backend.batch_sizes(config.batch_size, config.cuda_batch_sizes):
                        bar.set_postfix_str(f"{entry.label} / {backend.name} / batch {batch}")
                        cell_dir = Path(tmp) / f"{len(records):04d}-{backend.name}-{batch}"  # not entry.name: a path
                        cell_dir.mkdir()
                        record = BenchRecord(
                            model=entry.name, label=entry.label, backend=backend.name, device=backend.device,
                            dtype=backend.dtype, batch_size=batch, resolution=res, params=params, macs=macs,
                            top1=entry.top1, top1_source=entry.top1_source, threads=threads,
                        )
                        if failure is not None:
                            record.status, record.note = "failed", failure
                        else:
                            # a fresh copy per cell: no backend sees another's rewrites (a copy, not a new build:
                            # that would redo its BN calibration passes)
                            fresh = functools.partial(copy.deepcopy, model)
                            record = _measure(record, backend, fresh, batch, res, cell_dir, threads, config)
                        records.append(record)
                        bar.update(1)
                del model
    finally:
        bar.close()
        torch.set_num_threads(previous_threads)
    return BenchReport(environment=environment, config=asdict(config) | {"threads": threads}, records=records,
                       skipped_backends=skipped, backend_descriptions={b.name: b.description for b in backends})


def _measure(record: BenchRecord, backend: Backend, build, batch: int, res: int, workdir: Path, threads: int,
             config: BenchConfig) -> BenchRecord:
    torch.manual_seed(config.seed)
    model = build()
    example = torch.randn(batch, 3, res, res)
    start = time.perf_counter()
    try:
        prepared = backend.prepare(model, example, workdir, threads)
        prepared.run()  # the first call: lazy initialisation belongs to setup
        record.setup_s = time.perf_counter() - start
        probe_start = time.perf_counter()
        prepared.run()
        if prepared.sync:
            prepared.sync()
        runs = _runs_within_budget(time.perf_counter() - probe_start, config)
        timing = time_callable(prepared.run, warmup=config.warmup, runs=runs, sync=prepared.sync)
    except NotApplicable as err:
        record.status, record.note = "n/a", str(err)
        return record
    except Exception as err:  # noqa: BLE001 -- a conversion/runtime failure of one cell must not end the run
        record.status, record.note = "failed", f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        return record
    record.status, record.note = "ok", prepared.note
    record.warmup, record.runs = config.warmup, timing.runs
    record.median_ms, record.p90_ms, record.mean_ms, record.min_ms = (
        timing.median_ms, timing.p90_ms, timing.mean_ms, timing.min_ms)
    record.images_per_s = batch * 1e3 / timing.median_ms if timing.median_ms > 0 else None
    return record
