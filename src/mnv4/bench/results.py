"""Benchmark results: one record per (model, backend, batch size); JSON / CSV files and the terminal table."""

from __future__ import annotations

import csv
import json
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

from ..errors import UserError
from .catalog import REFERENCE_MODEL

FORMAT_VERSION = 1


@dataclass
class BenchRecord:
    model: str
    label: str
    backend: str
    device: str
    dtype: str
    batch_size: int
    resolution: int
    params: int | None  # None: the model could not be built (its cells failed, ``note`` says why)
    macs: int | None  # per image
    top1: float | None
    top1_source: str
    threads: int
    status: str = "pending"  # 'ok', 'failed' (with the error in ``note``), 'n/a' (backend cannot run this model)
    note: str = ""
    setup_s: float | None = None  # export / compile / first call, reported apart from the steady state
    warmup: int | None = None
    runs: int | None = None
    median_ms: float | None = None  # per batch
    p90_ms: float | None = None
    mean_ms: float | None = None
    min_ms: float | None = None
    images_per_s: float | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok" and self.median_ms is not None


@dataclass
class BenchReport:
    environment: dict
    config: dict
    records: list[BenchRecord]
    skipped_backends: dict[str, str] = field(default_factory=dict)
    backend_descriptions: dict[str, str] = field(default_factory=dict)

    @property
    def backends(self) -> list[str]:
        return list(dict.fromkeys(r.backend for r in self.records))

    @property
    def models(self) -> list[str]:
        return list(dict.fromkeys(r.model for r in self.records))

    def lookup(self, model: str, backend: str, batch_size: int) -> BenchRecord | None:
        for r in self.records:
            if (r.model, r.backend, r.batch_size) == (model, backend, batch_size):
                return r
        return None

    def speedup(self, record: BenchRecord, reference: str = REFERENCE_MODEL) -> float | None:
        """Reference latency / this latency, same backend and batch size (> 1: faster than the reference)."""
        ref = self.lookup(reference, record.backend, record.batch_size)
        if ref is None or not ref.ok or not record.ok:
            return None
        return ref.median_ms / record.median_ms

    def to_dict(self) -> dict:
        return {
            "format": "mnv4-bench",
            "version": FORMAT_VERSION,
            "environment": self.environment,
            "config": self.config,
            "skipped_backends": self.skipped_backends,
            "backend_descriptions": self.backend_descriptions,
            "results": [asdict(r) | {"speedup_vs_" + REFERENCE_MODEL: self.speedup(r)} for r in self.records],
        }


def write_json(report: BenchReport, path: str | Path) -> Path:
    path = Path(path)
    path.write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    return path


def write_csv(report: BenchReport, path: str | Path) -> Path:
    path = Path(path)
    names = [f.name for f in fields(BenchRecord)] + ["speedup_vs_" + REFERENCE_MODEL]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=names)
        writer.writeheader()
        for r in report.records:
            writer.writerow(asdict(r) | {"speedup_vs_" + REFERENCE_MODEL: report.speedup(r)})
    return path


def load_results(path: str | Path) -> BenchReport:
    """Read a ``mnv4 bench`` JSON file back; raises one clear error for a missing, empty or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no results file at {path}; write one with `mnv4 bench --out DIR` (DIR/bench.json)")
    text = path.read_text()
    hint = "expected the bench.json written by `mnv4 bench`"
    if not text.strip():
        raise UserError(f"{path} is empty; {hint}")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise UserError(f"{path} is not valid JSON ({err}); {hint}") from None
    if not isinstance(data, dict) or data.get("format") != "mnv4-bench" or not isinstance(data.get("results"), list):
        raise UserError(f"{path} is not a mnv4 bench results file; {hint}")
    known = {f.name for f in fields(BenchRecord)}
    required = {f.name for f in fields(BenchRecord) if f.default is MISSING}
    records = []
    for i, row in enumerate(data["results"]):
        missing = required - set(row) if isinstance(row, dict) else required
        if missing:
            raise UserError(f"{path}: result #{i} lacks {', '.join(sorted(missing))}; {hint}")
        records.append(BenchRecord(**{k: v for k, v in row.items() if k in known}))
    if not records:
        raise UserError(f"{path} holds no results; run `mnv4 bench` first")
    return BenchReport(
        environment=data.get("environment", {}), config=data.get("config", {}), records=records,
        skipped_backends=data.get("skipped_backends", {}), backend_descriptions=data.get("backend_descriptions", {}),
    )


def _cell(report: BenchReport, record: BenchRecord | None) -> str:
    if record is None:
        return "-"
    if not record.ok:
        return record.status
    speedup = report.speedup(record)
    return f"{record.median_ms:.1f}" + (f" ({speedup:.2f}x)" if speedup is not None else "")


def format_table(report: BenchReport, batch_size: int | None = None) -> str:
    """Models x backends at one batch size: median ms per batch, (speed-up vs MobileNetV3-L on that backend)."""
    if batch_size is None:
        batch_size = int(report.config.get("batch_size", 1))
    backends = [b for b in report.backends if any(r.backend == b and r.batch_size == batch_size
                                                  for r in report.records)]
    first = {m: next(r for r in report.records if r.model == m) for m in report.models}
    head = [f"{'model':16s}", f"{'res':>4s}", f"{'params M':>8s}", f"{'GMACs':>6s}", f"{'top-1':>6s}"]
    head += [f"{b:>17s}" for b in backends]
    lines = [" ".join(head), "-" * len(" ".join(head))]
    for m in report.models:
        r = first[m]
        top1 = f"{r.top1:.1f}" if r.top1 is not None else "-"
        params = f"{r.params / 1e6:.2f}" if r.params is not None else "-"
        macs = f"{r.macs / 1e9:.3f}" if r.macs is not None else "-"
        row = [f"{r.label:16s}", f"{r.resolution:>4d}", f"{params:>8s}", f"{macs:>6s}", f"{top1:>6s}"]
        row += [f"{_cell(report, report.lookup(m, b, batch_size)):>17s}" for b in backends]
        lines.append(" ".join(row))
    return "\n".join(lines)


def format_throughput(report: BenchReport) -> str | None:
    """Images/s per batch size for backends that swept batch sizes (CUDA); None when none did."""
    swept = [b for b in report.backends if len({r.batch_size for r in report.records if r.backend == b}) > 1]
    if not swept:
        return None
    lines = []
    for b in swept:
        sizes = sorted({r.batch_size for r in report.records if r.backend == b})
        lines.append(f"{b}: images/s by batch size")
        lines.append(f"  {'model':16s} " + " ".join(f"{s:>9d}" for s in sizes))
        for m in report.models:
            cells = []
            for s in sizes:
                r = report.lookup(m, b, s)
                cells.append(f"{r.images_per_s:>9.0f}" if r is not None and r.ok and r.images_per_s else f"{'-':>9s}")
            lines.append(f"  {report.lookup(m, b, sizes[0]).label if report.lookup(m, b, sizes[0]) else m:16s} "
                         + " ".join(cells))
    return "\n".join(lines)


def format_environment(report: BenchReport) -> str:
    env = report.environment
    libs = ", ".join(f"{k} {v}" for k, v in env.get("libraries", {}).items())
    lines = [
        f"CPU: {env.get('cpu', '?')}; {env.get('physical_cores', '?')} physical cores, "
        f"{env.get('usable_cpus', '?')} usable CPUs; threads: {env.get('threads', '?')}",
    ]
    if env.get("gpu"):
        lines.append(f"GPU: {env['gpu']}")
    if "load_average" in env:
        busy = env["load_average"][0] >= 0.5 * env.get("usable_cpus", 1)
        lines.append(f"load average at start: {env['load_average']}"
                     + (" -- other work was running: expect noisy numbers" if busy else ""))
    lines.append(f"libraries: {libs}")
    for name, description in report.backend_descriptions.items():
        lines.append(f"backend {name}: {description}")
    for name, reason in report.skipped_backends.items():
        lines.append(f"backend {name}: not run -- {reason}")
    return "\n".join(lines)
