"""Cost models T(a) for the architecture search, and how well they predict measured latency.

A cost model is a callable ``cost(spec, resolution) -> float`` with a ``name`` and a ``unit`` (``CostModel``):

- ``roofline_cost(rp)``: the paper's hardware-independent ModelTime (§3, App. F) at ridge point ``rp`` -- a named
  profile of its Tab. 16 ('pixel6-cpu', ...) or a number of MACs/byte -- in effective MACs (ModelTime x PeakMACs,
  see ``mnv4.roofline``; RP 0 is the plain MAC count). Computed from the layer table alone
  (``analysis.spec_parts``), never building a network: a search evaluates it thousands of times.
- ``LatencyTableCost``: latency measured on this machine with ONNX Runtime, one entry per part of the network (stem,
  each block at its input size and widths, head) measured once and kept in a JSON file, summed per architecture.

``validate_cost`` measures the end-to-end ORT latency of a list of architectures and reports how well each cost
ranks them (Spearman); ``random_architectures`` draws neighbours of the registered conv tables to validate on.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from ..analysis import SpecPart, part_profile, spec_parts
from ..engine.outputs import check_output_file
from ..errors import UserError
from ..layers import make_divisible
from ..roofline import NAMED_PROFILES, bytes_per_element, check_ridge_point, spearman
from ..specs import MIN_INPUT_SIZE, UIB, ModelSpec, closest_names, get_spec, validate_spec


@runtime_checkable
class CostModel(Protocol):
    """T(a): ``cost(spec, resolution)`` for one image; ``name`` says which model, ``unit`` what the number is."""

    name: str
    unit: str

    def __call__(self, spec: ModelSpec, resolution: int) -> float: ...


def _check_resolution(resolution: int) -> int:
    if not isinstance(resolution, int) or isinstance(resolution, bool) or resolution < MIN_INPUT_SIZE:
        raise UserError(f"resolution must be an int >= {MIN_INPUT_SIZE} px, got {resolution!r}")
    return resolution


# ---------------------------------------------------------------------------------------------------- roofline
class RooflineCost:
    """ModelTime x PeakMACs = sum over layers of max(MACs, RP x bytes), in effective MACs (``mnv4.roofline``).

    Only the ridge point changes how architectures rank (dividing by a device's PeakMACs gives seconds). Each part
    of the network (stem, a block at its input size, head) is summed once and cached, so a new architecture costs
    a walk over its table plus dictionary look-ups.
    """

    unit = "effective MACs"

    def __init__(self, ridge_point: float, precision: str = "int8", label: str | None = None,
                 in_chans: int = 3, num_classes: int = 1000):
        self.ridge_point = check_ridge_point(ridge_point)
        self.precision = precision
        self._bytes = bytes_per_element(precision)
        self.in_chans, self.num_classes = in_chans, num_classes
        self.name = f"roofline RP {self.ridge_point:g}" + (f" ({label})" if label else "") + f" {precision}"
        self._parts: dict[SpecPart, float] = {}

    def part_cost(self, part: SpecPart) -> float:
        cost = self._parts.get(part)
        if cost is None:
            rp, per_elem = self.ridge_point, self._bytes
            cost = sum(max(float(r.macs), rp * per_elem * (r.weight_elems + r.input_elems + r.output_elems))
                       for r in part_profile(part)[0])
            self._parts[part] = cost
        return cost

    def __call__(self, spec: ModelSpec, resolution: int) -> float:
        parts = spec_parts(spec, _check_resolution(resolution), self.in_chans, self.num_classes)
        return sum(self.part_cost(part) for _, part in parts)

    def __repr__(self) -> str:
        return f"RooflineCost({self.name!r})"


def roofline_cost(ridge_point: float | str, precision: str = "int8") -> RooflineCost:
    """The roofline cost at a named profile of the paper's Tab. 16 (``mnv4.roofline.NAMED_PROFILES``:
    'pixel6-cpu', 's23-cpu', 'pixel4-dsp', 'pixel8-edgetpu'), or at a ridge point in MACs/byte (0 = MAC count)."""
    label = None
    if isinstance(ridge_point, str):
        name = ridge_point.strip()
        if name in NAMED_PROFILES:
            ridge_point, label = NAMED_PROFILES[name][0], name
        else:
            try:
                ridge_point = float(name)
            except ValueError:
                close = closest_names(name, list(NAMED_PROFILES))
                hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
                raise UserError(f"unknown hardware profile {name!r}.{hint} Give one of "
                                f"{', '.join(NAMED_PROFILES)} or a ridge point in MACs/byte (e.g. 31.2)") from None
    if isinstance(ridge_point, bool) or not isinstance(ridge_point, (int, float)):
        raise UserError(f"ridge point must be a profile name or a number of MACs/byte, got {ridge_point!r}")
    try:
        return RooflineCost(ridge_point, precision, label)
    except ValueError as err:
        raise UserError(str(err)) from None


# ---------------------------------------------------------------------------------------------------- latency table
TABLE_FORMAT = "mnv4-latency-table/1"


def default_table_path() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mnv4" / "latency_tables.json"


def runtime_fingerprint(threads: int) -> str:
    """What a part's latency depends on besides the part: runtime and version, threads, precision, CPU."""
    from ..bench.environment import cpu_model, physical_cores
    from ..export import require
    from .measure import ONNX_OPSET

    onnxruntime = require("onnxruntime")  # a missing extra: one line naming the pip command
    return (f"onnxruntime {onnxruntime.__version__} CPU, fp32, batch 1, {threads} threads, no spinning, opset "
            f"{ONNX_OPSET} | {cpu_model()}, {physical_cores()} cores")


class _Head(nn.Module):
    """The head of a (deployed) model as a module of its own: pool -> 1x1 conv -> act -> classifier."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(x)


class LatencyTableCost:
    """Measured latency on this machine: ONNX Runtime (CPU provider, ``threads`` threads, batch 1, fp32) per part of
    the network -- stem, each block (row, in/out channels, input size, activation, anti-aliasing), head -- summed.

    A part is measured once, the first time an architecture needs it (``measure_missing``; ``measure`` fills the
    table for many architectures ahead of a search, which is faster), and kept in ``path`` (JSON, one table per
    runtime fingerprint: ORT version, threads, CPU). Each part runs deployed (BN and layer scale folded) as its own
    ORT session on a random input of its shape, sampled in ``rounds`` passes over all parts being measured
    (``runs_per_round`` timed calls each, median). Every separate ``session.run`` pays a fixed call cost (feed,
    fetch, dispatch) that a whole network pays once; with ``subtract_overhead`` that cost -- an Identity graph on
    the part's input, timed right after it -- is taken off every part but the stem.
    """

    unit = "ms"

    def __init__(
        self,
        path: str | os.PathLike | None = None,
        *,
        threads: int | None = None,
        in_chans: int = 3,
        num_classes: int = 1000,
        rounds: int = 3,
        runs_per_round: int = 10,
        warmup: int = 3,
        measure_missing: bool = True,
        subtract_overhead: bool = True,
        progress: bool = False,
    ):
        from ..bench.environment import default_threads

        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise UserError(f"threads must be a positive int, got {threads!r}")
        self.path = Path(path) if path is not None else default_table_path()
        if measure_missing:  # the table is written when the first part is measured: check now, not then
            check_output_file(self.path, "--latency-table")
        self.threads = threads or default_threads()
        self.in_chans, self.num_classes = in_chans, num_classes
        self.rounds, self.runs_per_round, self.warmup = rounds, runs_per_round, warmup
        self.measure_missing, self.subtract_overhead, self.progress = measure_missing, subtract_overhead, progress
        self.fingerprint = runtime_fingerprint(self.threads)
        self.name = f"latency table (onnxruntime, {self.threads} threads)"
        self.entries: dict[str, dict[str, float]] = self._read().get(self.fingerprint, {}).get("entries", {})

    # ---------------------------------------------------------------- the file
    def _read(self) -> dict:
        if not self.path.exists():
            return {}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise UserError(f"latency table {self.path} is not readable JSON ({err}); move it away or pass another "
                            "path, and the table is measured again") from None
        if not isinstance(data, dict) or data.get("format") != TABLE_FORMAT:
            raise UserError(f"{self.path} is not a latency table ({TABLE_FORMAT}); pass another path")
        return data.get("tables", {})

    def _save(self) -> None:
        """Merge this table into the file (another process may have added entries) and replace it atomically."""
        tables = self._read()
        table = tables.setdefault(self.fingerprint, {"entries": {}})
        table["entries"].update(self.entries)
        self.entries = dict(table["entries"])
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".latency-", suffix=".json")
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as f:
                json.dump({"format": TABLE_FORMAT, "tables": tables}, f, indent=1, sort_keys=True)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    # ---------------------------------------------------------------- look-ups
    def parts(self, spec: ModelSpec, resolution: int) -> list[tuple[str, SpecPart]]:
        return spec_parts(spec, _check_resolution(resolution), self.in_chans, self.num_classes)

    def part_ms(self, part: SpecPart) -> float:
        entry = self.entries[part.key()]
        if self.subtract_overhead and part.kind != "stem":
            return max(entry["ms"] - entry["null_ms"], 0.0)
        return entry["ms"]

    def breakdown(self, spec: ModelSpec, resolution: int) -> list[tuple[str, SpecPart, float]]:
        """(module, part, ms) for every part of ``spec``, measuring what is missing."""
        parts = self.parts(spec, resolution)
        missing = [p for _, p in parts if p.key() not in self.entries]
        if missing:
            if not self.measure_missing:
                raise UserError(f"{spec.name}: {len(missing)} part(s) not in the latency table {self.path} (e.g. "
                                f"{missing[0].key()}); call measure() first or allow measure_missing")
            self.measure([spec], resolution)
        return [(module or part.kind, part, self.part_ms(part)) for module, part in parts]

    def __call__(self, spec: ModelSpec, resolution: int) -> float:
        return sum(ms for _, _, ms in self.breakdown(spec, resolution))

    # ---------------------------------------------------------------- measuring
    def measure(self, specs: Sequence[ModelSpec], resolution: int) -> int:
        """Measure every part of ``specs`` not yet in the table and save the table; returns how many parts were
        measured. All parts are exported first, then timed in ``rounds`` passes over all of them."""
        from tqdm.auto import tqdm

        todo = []
        seen = set(self.entries)
        for spec in specs:
            missing = []
            for module, part in self.parts(spec, resolution):
                if part.key() not in seen:
                    seen.add(part.key())
                    missing.append((module, part))
            if missing:
                todo.append((spec, missing))
        if not todo:
            return 0
        with tempfile.TemporaryDirectory(prefix="mnv4-latency-") as tmp:
            exported = []
            for spec, missing in tqdm(todo, desc="latency table: export", unit="arch", disable=not self.progress):
                exported += self._export_parts(spec, resolution, missing, Path(tmp))
            self.entries.update(self._time_parts(exported, Path(tmp)))
        self._save()
        return len(exported)

    def _export_parts(self, spec: ModelSpec, resolution: int, missing: list[tuple[str, SpecPart]],
                      workdir: Path) -> list[tuple[str, Path, tuple[int, ...]]]:
        """(key, ONNX file, input shape) of each missing part, cut from one deployed network of ``spec``."""
        from ..deploy import deploy
        from ..model import MobileNetV4
        from ..testing import make_nondegenerate
        from .measure import export_for_ort

        with torch.random.fork_rng():
            torch.manual_seed(0)
            model = MobileNetV4(spec, num_classes=self.num_classes, in_chans=self.in_chans)
            # Trained-like BN statistics: random-init BN lets activations decay into slow float denormals.
            make_nondegenerate(model, input_size=(resolution, resolution), batch_size=2, passes=1,
                               in_chans=self.in_chans)
            deployed = deploy(model)
            out = []
            for module_name, part in missing:
                shape = (1, part.in_ch, *part.size)
                path = export_for_ort(self._part_module(deployed, module_name, part), torch.randn(shape), workdir)
                out.append((part.key(), path, shape))
        return out

    def _time_parts(self, exported: list[tuple[str, Path, tuple[int, ...]]],
                    workdir: Path) -> dict[str, dict[str, float]]:
        """Median ms of each part and of the Identity graph on its input ('null_ms'), over ``rounds`` passes over
        all parts; in a pass each part gets a fresh session, ``warmup`` calls and ``runs_per_round`` timed calls,
        then the Identity graph the same. Spreading each part's samples over the whole measurement keeps a burst of
        load on a shared machine from skewing the parts that happened to be timed during it."""
        from tqdm.auto import tqdm

        from .measure import null_runner, session_runner, time_interleaved

        nulls: dict[tuple[int, ...], object] = {}  # Identity graphs are cheap to keep
        samples: dict[str, dict[str, list[float]]] = {key: {"ms": [], "null_ms": []} for key, _, _ in exported}
        for _ in tqdm(range(self.rounds), desc="latency table: timing", unit="pass", disable=not self.progress):
            for key, path, shape in exported:
                example = torch.randn(shape)
                if shape not in nulls:
                    nulls[shape] = null_runner(example, workdir, self.threads)
                fns = {"ms": session_runner(path, example, self.threads), "null_ms": nulls[shape]}
                for what, seconds in time_interleaved(fns, 1, self.runs_per_round, self.warmup).items():
                    samples[key][what].append(seconds[0] * 1e3)
        return {key: {what: float(np.median(v)) for what, v in s.items()} for key, s in samples.items()}

    @staticmethod
    def _part_module(deployed: nn.Module, module_name: str, part: SpecPart) -> nn.Module:
        if part.kind == "stem":
            return nn.Sequential(deployed.conv_stem, deployed.bn1)
        if part.kind == "head":
            return _Head(deployed)
        return deployed.get_submodule(module_name)

    def __repr__(self) -> str:
        return f"LatencyTableCost({str(self.path)!r}, {len(self.entries)} parts, {self.fingerprint!r})"


# ---------------------------------------------------------------------------------------------------- validation
@dataclass(frozen=True)
class CostValidation:
    """End-to-end measured latency of each architecture next to each cost model's prediction."""

    resolution: int
    runtime: str
    names: tuple[str, ...]
    measured_ms: tuple[float, ...]
    spread_ms: tuple[tuple[float, float], ...]  # min and max of the per-round medians
    costs: tuple[tuple[str, str], ...]  # (name, unit) per cost model
    predicted: tuple[tuple[float, ...], ...]  # [cost][architecture]

    @property
    def spearman(self) -> dict[str, float]:
        """Rank correlation of measured latency with each cost's prediction."""
        return {name: spearman(self.measured_ms, pred) for (name, _), pred in zip(self.costs, self.predicted,
                                                                                    strict=True)}

    def spearman_within(self, groups: Sequence[str]) -> dict[str, dict[str, float]]:
        """Spearman per group of architectures (``groups[i]`` names the group of architecture i)."""
        out: dict[str, dict[str, float]] = {}
        for group in dict.fromkeys(groups):
            idx = [i for i, g in enumerate(groups) if g == group]
            if len(idx) < 3:
                continue
            measured = [self.measured_ms[i] for i in idx]
            out[group] = {name: spearman(measured, [pred[i] for i in idx])
                          for (name, _), pred in zip(self.costs, self.predicted, strict=True)}
        return out

    def format(self) -> str:
        width = max([12, *(len(n) for n in self.names)])
        lines = [f"cost models vs measured latency: {len(self.names)} architectures at {self.resolution} px, "
                 f"{self.runtime}",
                 f"{'architecture':{width}s} {'measured ms':>11s} {'(min-max)':>13s} "
                 + " ".join(f"{f'[{i + 1}]':>9s}" for i in range(len(self.costs)))]
        for i, name in enumerate(self.names):
            lo, hi = self.spread_ms[i]
            cells = " ".join(f"{_short(pred[i]):>9s}" for pred in self.predicted)
            lines.append(f"{name:{width}s} {self.measured_ms[i]:>11.3f} {f'{lo:.2f}-{hi:.2f}':>13s} {cells}")
        lines.append("Spearman rank correlation of each cost model with the measured latency:")
        for i, ((name, unit), rho) in enumerate(zip(self.costs, self.spearman.values(), strict=True)):
            lines.append(f"  [{i + 1}] {rho:+.3f}  {name} ({unit})")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()


def _short(value: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.4g}{unit}"
    return f"{value:.4g}"


@dataclass(frozen=True)
class LatencyMeasurement:
    """End-to-end latency of a list of architectures, in order: median ms and (min, max) of the per-round medians."""

    runtime: str
    ms: tuple[float, ...]
    spread_ms: tuple[tuple[float, float], ...]


def measure_latency(
    specs: Sequence[ModelSpec], resolution: int, threads: int | None = None, rounds: int = 10,
    runs_per_round: int = 3, warmup: int = 3, progress: bool = False,
) -> LatencyMeasurement:
    """End-to-end ORT latency (batch 1, exported with ``export_onnx``, trained-like BN statistics) of each spec, all
    timed interleaved, ``rounds`` rounds of ``runs_per_round`` calls each."""
    from tqdm.auto import tqdm

    from ..bench.environment import default_threads
    from ..model import MobileNetV4
    from ..testing import make_nondegenerate
    from .measure import ort_runner, time_interleaved

    threads = threads or default_threads()
    fns = {}
    with tempfile.TemporaryDirectory(prefix="mnv4-validate-") as tmp, torch.random.fork_rng():
        for i, spec in enumerate(tqdm(specs, desc="export", unit="arch", disable=not progress)):
            torch.manual_seed(0)
            model = make_nondegenerate(MobileNetV4(spec), input_size=(resolution, resolution), batch_size=2,
                                       passes=1)
            fns[i] = ort_runner(model, torch.randn(1, 3, resolution, resolution), Path(tmp), threads)
        per_round = time_interleaved(fns, rounds, runs_per_round, warmup)
    return LatencyMeasurement(
        f"onnxruntime, {threads} threads, batch 1",
        tuple(float(np.median(per_round[i])) * 1e3 for i in range(len(specs))),
        tuple((min(per_round[i]) * 1e3, max(per_round[i]) * 1e3) for i in range(len(specs))),
    )


def validate_cost(
    cost: CostModel | Sequence[CostModel],
    specs: Sequence[ModelSpec],
    resolution: int,
    *,
    threads: int | None = None,
    rounds: int = 10,
    runs_per_round: int = 3,
    measured: LatencyMeasurement | None = None,
    progress: bool = False,
) -> CostValidation:
    """Measure each spec end to end (``measure_latency``: ORT, batch 1, ``threads`` -- a ``LatencyTableCost``'s
    own when one is given) and compare with each cost's prediction (``.spearman``, ``.format()``). ``measured``
    reuses an earlier measurement of the same specs."""
    costs = [cost] if isinstance(cost, CostModel) else list(cost)
    if not costs or not all(isinstance(c, CostModel) for c in costs):
        raise UserError("validate_cost needs one or more cost models (callables with a name and a unit)")
    specs = [get_spec(s) for s in specs]
    if len(specs) < 3:
        raise UserError(f"validating a cost model needs at least 3 architectures, got {len(specs)}")
    _check_resolution(resolution)
    if measured is None:
        tables = [c for c in costs if isinstance(c, LatencyTableCost)]
        threads = threads or (tables[0].threads if tables else None)
        measured = measure_latency(specs, resolution, threads, rounds, runs_per_round, progress=progress)
    elif len(measured.ms) != len(specs):
        raise UserError(f"the measurement has {len(measured.ms)} latencies for {len(specs)} architectures")
    predicted = tuple(tuple(float(c(spec, resolution)) for spec in specs) for c in costs)
    return CostValidation(resolution, measured.runtime, tuple(s.name for s in specs), measured.ms,
                          measured.spread_ms, tuple((c.name, c.unit) for c in costs), predicted)


# ---------------------------------------------------------------------------------------------------- sampling
VALIDATION_BASES = ("mobilenetv4_conv_small", "mobilenetv4_conv_medium")


def random_architectures(n: int, seed: int = 0, bases: Sequence[str] = VALIDATION_BASES) -> list[ModelSpec]:
    """``n`` random neighbours of registered tables (alternating ``bases``), for validating cost models: every stage
    of UIB rows gets a random width (x0.5-1.5), depth (-2..+2 rows) and, per row, random DW slots (absent / 3x3 /
    5x5; a strided row keeps one) and expansion (2, 3, 4, 6). Stem, fixed conv/FusedIB stages and head stay."""
    if not isinstance(n, int) or n < 1:
        raise UserError(f"the number of architectures must be a positive int, got {n!r}")
    rng = random.Random(seed)
    out = []
    for i in range(n):
        base = get_spec(bases[i % len(bases)])
        stages = tuple(_perturb_stage(stage, rng) if all(isinstance(r, UIB) for r in stage) else stage
                       for stage in base.stages)
        spec = replace(base, name=f"{base.name}-random{seed}-{i}", stages=stages, description="random neighbour",
                       source=f"random_architectures(seed={seed})", top1=None, extra=True, notes=())
        validate_spec(spec)
        out.append(spec)
    return out


def _perturb_stage(stage: tuple[UIB, ...], rng: random.Random) -> tuple[UIB, ...]:
    width = make_divisible(stage[0].out * rng.choice((0.5, 0.75, 1.0, 1.25, 1.5)))
    depth = max(1, len(stage) + rng.randint(-2, 2))
    rows = []
    for j in range(depth):
        start, mid = rng.choice((0, 3, 5)), rng.choice((0, 3, 5))
        stride = stage[0].stride if j == 0 else 1
        if stride > 1 and not (start or mid):
            mid = rng.choice((3, 5))
        rows.append(UIB(start, mid, rng.choice((2, 3, 4, 6)), width, stride))
    return tuple(rows)


__all__ = [
    "CostModel", "CostValidation", "LatencyMeasurement", "LatencyTableCost", "RooflineCost", "measure_latency",
    "random_architectures", "roofline_cost", "validate_cost",
]
