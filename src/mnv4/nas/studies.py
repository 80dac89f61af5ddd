"""The paper's attention design studies, re-run on this machine (``mnv4 ablate``).

- ``mqa``: MQA vs MHSA (paper Tab. 2): a conv base model, the same plus 3 multi-head self-attention blocks, and plus
  3 Mobile MQA blocks. The paper's base (84.88% top-1, 6.0 GMACs, 30.9 M params) is not released; its size is that
  of MNv4-Conv-L at 384 px (5.9 GMACs, 32.6 M params as released), which is ours. The 3 blocks go into Conv-L's /32
  stage (512 channels, 12 x 12 at 384 px), one before each of its last three blocks, with Hybrid-L's /32 settings
  there (8 heads of 64, no K/V downsampling) -- the paper does not say where its 3 blocks sit.
- ``kv``: K/V downsampling (paper Tab. 3, "a hybrid" of ~1.25 GMACs): MNv4-Hybrid-M (1.2 GMACs at 256 px) as
  released, whose /16-stage MQA blocks downsample keys and values by a stride-2 3x3 DW conv, vs the same model with
  every K/V stride 1.

Each model is counted (params, MACs, the roofline at the paper's ridge points) and timed on this machine's runtimes,
interleaved, and printed next to the paper's figures -- which are from other models' training runs and phones, so
only the *relative* changes compare. The MHSA block exists only for this study: ``MobileMHSA`` is ``MobileMQA``
(BN pre-norm, K/V down-convs, no bias, layer scale, residual) with one key and one value head per query head.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..analysis import count_params, profile_layers
from ..blocks import MobileMQA, MultiQueryAttention2d
from ..errors import UserError
from ..layers import conv2d, init_weights_goog
from ..model import MobileNetV4
from ..roofline import NAMED_PROFILES, roofline_layers, sweep
from ..specs import CONV_LARGE, HYBRID_MEDIUM, MIN_INPUT_SIZE, MQA, ModelSpec


# ---------------------------------------------------------------------------------------------------- MHSA block
class MultiHeadAttention2d(MultiQueryAttention2d):
    """Standard multi-head self-attention on NCHW maps: ``num_heads`` heads of queries, keys AND values.

    Everything else is ``MultiQueryAttention2d``'s: 1x1 projections without bias, the optional stride-``kv_stride``
    DW conv + BN on the key and value inputs, head-major channel layout, "sdpa" / "math". Only the key and value
    projections grow from C -> d to C -> heads x d, which is what multi-query attention saves.
    """

    def __init__(self, channels: int, num_heads: int, key_dim: int, value_dim: int | None = None,
                 kv_stride: int = 1, kv_kernel: int = 3, impl: str = "sdpa"):
        super().__init__(channels, num_heads, key_dim, value_dim, kv_stride, kv_kernel, impl=impl)
        self.key.proj = conv2d(channels, num_heads * self.key_dim, 1)
        self.value.proj = conv2d(channels, num_heads * self.value_dim, 1)
        self.reset_parameters()

    @property
    def kv_heads(self) -> int:
        """Key/value heads (1 in multi-query attention); ``analysis.profile_layers`` counts their reads."""
        return self.num_heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, _, H, W = x.shape
        h, d, dv = self.num_heads, self.key_dim, self.value_dim
        # (B, h*d, H, W) -> (B, h, N, d); contiguous, as CPU SDPA is slow on transposed inputs (see the MQA).
        q = self.query(x).reshape(B, h, d, H * W).transpose(-1, -2).contiguous()
        k = self.key(x).flatten(2).reshape(B, h, d, -1).transpose(-1, -2).contiguous()
        v = self.value(x).flatten(2).reshape(B, h, dv, -1).transpose(-1, -2).contiguous()
        if self.impl == "sdpa":
            o = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        else:
            o = torch.matmul(torch.matmul(q * self.scale, k.transpose(-1, -2)).softmax(dim=-1), v)
        return self.output(o.transpose(-1, -2).reshape(B, h * dv, H, W))


class MobileMHSA(MobileMQA):
    """``MobileMQA``'s block (BN pre-norm -> attention -> layer scale -> drop path -> + x) around multi-head
    attention. A ``MobileMQA`` subclass, so ``mnv4.deploy`` folds it and the exporters take it unchanged."""

    def __init__(self, channels: int, num_heads: int, key_dim: int, kv_stride: int = 1, kv_kernel: int = 3,
                 layer_scale: float | None = None, drop_path: float = 0.0, attn_impl: str = "sdpa"):
        super().__init__(channels, num_heads, key_dim, kv_stride, kv_kernel, layer_scale, drop_path, attn_impl)
        self.attn = MultiHeadAttention2d(channels, num_heads, key_dim, key_dim, kv_stride, kv_kernel, attn_impl)


# ---------------------------------------------------------------------------------------------------- study models
@dataclass(frozen=True)
class StudyModel:
    """One row of a study: a table, and whether its MQA rows are built as multi-head attention ('mhsa')."""

    label: str
    spec: ModelSpec
    attention: str = "mqa"

    def build(self, num_classes: int = 1000) -> MobileNetV4:
        """The network (random init). With 'mhsa', each Mobile MQA block becomes a ``MobileMHSA`` of the same
        channels, heads, head dim, K/V stride and layer scale."""
        model = MobileNetV4(self.spec, num_classes=num_classes)
        if self.attention == "mhsa":
            for stage_rows, stage in zip(self.spec.stages, model.blocks, strict=True):
                for i, row in enumerate(stage_rows):
                    if isinstance(row, MQA):
                        block = MobileMHSA(stage[i].norm.num_features, row.heads, row.head_dim, row.kv_stride,
                                           layer_scale=self.spec.layer_scale)
                        init_weights_goog(block)
                        block.attn.reset_parameters()
                        stage[i] = block
        return model


def _with_attention_in_last_stage(base: ModelSpec, count: int, heads: int, head_dim: int, name: str) -> ModelSpec:
    """``base`` with ``count`` MQA rows in its widest UIB stage, one before each of its last ``count`` rows."""
    stage_idx = max(i for i, stage in enumerate(base.stages) if len(stage) > count)
    stage = base.stages[stage_idx]
    width = stage[-1].out
    rows = list(stage[:-count])
    for row in stage[-count:]:
        rows += [MQA(heads, head_dim, 1, width), row]
    stages = base.stages[:stage_idx] + (tuple(rows),) + base.stages[stage_idx + 1:]
    return replace(base, name=name, stages=stages, description=f"{base.description} + {count} attention",
                   source="mnv4 ablate", top1=None, extra=True)


def _without_kv_downsampling(spec: ModelSpec, name: str) -> ModelSpec:
    stages = tuple(tuple(replace(r, kv_stride=1) if isinstance(r, MQA) else r for r in stage) for stage in spec.stages)
    return replace(spec, name=name, stages=stages, description=f"{spec.description}, no K/V downsampling",
                   source="mnv4 ablate", top1=None, extra=True)


_MQA_BASE = CONV_LARGE
_WITH_3 = _with_attention_in_last_stage(_MQA_BASE, 3, 8, 64, "conv_large_plus_3_attention")


# ---------------------------------------------------------------------------------------------------- studies
@dataclass(frozen=True)
class Study:
    """A study: its models, the paper's table, and the summary row both are reduced to.

    ``summary(values)`` maps {row label: value of one column} to the study's summary figure (a relative change);
    ``paper_columns`` / ``paper_rows`` are the paper's table as printed (its first column is top-1 %).
    """

    key: str
    title: str
    resolution: int
    models: tuple[StudyModel, ...]
    summary_label: str  # short, for the row
    summary_note: str  # what the summary row is
    summary: Callable[[dict[str, float]], float]
    paper_columns: tuple[str, ...]
    paper_rows: tuple[tuple[str, tuple[float, ...]], ...]
    paper_note: str
    our_note: str

    def paper_summary(self) -> tuple[float, ...]:
        """The paper's summary row, computed from its table the way ours is. Top-1 (first column) as the paper
        prints it: the difference in points, last row (the variant the paper keeps) minus the one before."""
        labels = [label for label, _ in self.paper_rows]
        columns = list(zip(*(values for _, values in self.paper_rows), strict=True))
        return (columns[0][-1] - columns[0][-2], *(self.summary(dict(zip(labels, c, strict=True)))
                                                  for c in columns[1:]))


def _added_cost_change(values: dict[str, float]) -> float:
    """The paper's Tab. 2 'change' row: MQA's added cost over the base relative to MHSA's, minus 1."""
    return (values["+3 MQA"] - values["base"]) / (values["+3 MHSA"] - values["base"]) - 1.0


def _efficiency_gain(values: dict[str, float]) -> float:
    """The paper's Tab. 3 efficiency gain of K/V downsampling: cost without / cost with, minus 1."""
    return values["without"] / values["with"] - 1.0


STUDIES: dict[str, Study] = {
    "mqa": Study(
        key="mqa",
        title="MQA vs MHSA (paper Tab. 2): a conv model, plus 3 MHSA blocks, plus 3 Mobile MQA blocks",
        resolution=384,
        models=(StudyModel("base", _MQA_BASE), StudyModel("+3 MHSA", _WITH_3, "mhsa"), StudyModel("+3 MQA", _WITH_3)),
        summary_label="MQA vs MHSA",
        summary_note="change in the cost added to the base: (+3 MQA - base) / (+3 MHSA - base) - 1; top-1 in points",
        summary=_added_cost_change,
        paper_columns=("top-1 %", "GMACs", "Mparams", "Pixel 7 EdgeTPU ms", "Pixel 8 EdgeTPU ms", "S23 GPU ms"),
        paper_rows=(("base", (84.88, 6.0, 30.9, 4.31, 2.35, 13.15)),
                    ("+3 MHSA", (85.27, 6.7, 36.0, 9.69, 2.76, 16.46)),
                    ("+3 MQA", (85.24, 6.5, 34.7, 5.16, 2.60, 15.10))),
        paper_note="the paper's base model (not released) and its phones",
        our_note="base = MNv4-Conv-L; + 3 blocks (8 heads x 64, no K/V downsampling) in the /32 stage, one before "
                 "each of its last three blocks",
    ),
    "kv": Study(
        key="kv",
        title="K/V downsampling (paper Tab. 3): a hybrid with and without the stride-2 DW conv on keys and values",
        resolution=256,
        models=(StudyModel("without", _without_kv_downsampling(HYBRID_MEDIUM, "hybrid_medium_no_kv_downsampling")),
                StudyModel("with", HYBRID_MEDIUM)),
        summary_label="gain",
        summary_note="efficiency gain of K/V downsampling: without / with - 1; top-1 in points (with - without)",
        summary=_efficiency_gain,
        paper_columns=("top-1 %", "GMACs", "CPU ms", "GPU ms"),
        paper_rows=(("without", (80.77, 1.285, 15.8, 7.4)), ("with", (80.71, 1.245, 12.8, 5.9))),
        paper_note="the paper's hybrid (unnamed) on unnamed 'CPU' and 'GPU' devices",
        our_note="MNv4-Hybrid-M as released (K/V stride 2 in its four /16-stage MQA blocks) vs all K/V strides 1",
    ),
}

# The paper's ridge points (Tab. 16), for the roofline columns (RP 0 is the MAC count, a column of its own).
RIDGE_POINTS: dict[str, float] = {name: rp for name, (rp, _) in NAMED_PROFILES.items()}


@dataclass
class StudyConfig:
    studies: Sequence[str] = ("mqa", "kv")
    runtimes: Sequence[str] = ("eager", "deployed", "onnxruntime")
    resolution: int | None = None  # None: each study's own (384 / 256 px)
    threads: int | None = None  # None: one per physical core
    rounds: int = 5
    runs_per_round: int = 3
    warmup: int = 2
    precision: str = "int8"  # bytes per element of the roofline columns

    def validate(self) -> StudyConfig:
        from .measure import check_runtimes

        unknown = [s for s in self.studies if s not in STUDIES]
        if unknown or not self.studies:
            raise UserError(f"unknown study {', '.join(map(repr, unknown)) or '(none given)'}; choose from "
                            f"{', '.join(STUDIES)}")
        self.runtimes = check_runtimes(self.runtimes)
        checks = [
            (self.resolution is None or self.resolution >= MIN_INPUT_SIZE,
             f"--resolution must be >= {MIN_INPUT_SIZE}, got {self.resolution}"),
            (self.threads is None or self.threads >= 1, f"--threads must be >= 1, got {self.threads}"),
            (self.rounds >= 1 and self.runs_per_round >= 1, "--rounds and --runs must be >= 1"),
            (self.warmup >= 0, f"--warmup must be >= 0, got {self.warmup}"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(message)
        return self


@dataclass
class StudyRow:
    label: str
    params: int
    macs: int
    roofline: dict[str, float]  # {ridge point name: effective MACs}
    latency_rounds: dict[str, list[float]] = field(default_factory=dict)  # {runtime: per-round median ms}

    def latency_ms(self, runtime: str) -> float:
        return float(np.median(self.latency_rounds[runtime]))


@dataclass
class StudyResult:
    study: Study
    resolution: int
    threads: int
    runtimes: list[str]
    rows: list[StudyRow]

    def _summary(self, value: Callable[[StudyRow], float]) -> float:
        return self.study.summary({row.label: value(row) for row in self.rows})

    def latency_summary(self, runtime: str) -> tuple[float, float, float]:
        """The summary figure of ``runtime``'s latency: from the medians, and min / max over the rounds."""
        rounds = len(self.rows[0].latency_rounds[runtime])
        per_round = [self._summary(lambda r, i=i: r.latency_rounds[runtime][i]) for i in range(rounds)]
        return self._summary(lambda r: r.latency_ms(runtime)), min(per_round), max(per_round)

    def format(self) -> str:
        s = self.study
        width = max(len(label) for label in [s.summary_label, *(r.label for r in self.rows)]) + 2
        paper_cols = [max(len(c), 9) + 2 for c in s.paper_columns]
        lines = [s.title, f"  paper ({s.paper_note}):",
                 f"    {'model':{width}s}" + "".join(f"{c:>{w}s}" for c, w in zip(s.paper_columns, paper_cols,
                                                                                    strict=True))]
        for label, values in s.paper_rows:
            lines.append(f"    {label:{width}s}" + "".join(f"{v:>{w}g}" for v, w in zip(values, paper_cols,
                                                                                         strict=True)))
        summary = s.paper_summary()
        lines.append(f"    {s.summary_label:{width}s}{f'{summary[0]:+.2f}pt':>{paper_cols[0]}s}"
                     + "".join(f"{v:>+{w}.1%}" for v, w in zip(summary[1:], paper_cols[1:], strict=True)))
        threads = f"{self.threads} thread{'s' if self.threads != 1 else ''}"
        lines += [f"  ours ({s.our_note};", f"        {self.resolution} px, this machine: CPU, {threads}, batch 1; "
                  "roofline columns in G effective MACs at the named ridge point, int8):"]
        cols = ["Mparams", "GMACs", *RIDGE_POINTS, *(f"{r} ms" for r in self.runtimes)]
        ours_cols = [max(len(c), 9) + 2 for c in cols]
        lines.append(f"    {'model':{width}s}" + "".join(f"{c:>{w}s}" for c, w in zip(cols, ours_cols, strict=True)))
        for row in self.rows:
            cells = [row.params / 1e6, row.macs / 1e9, *(row.roofline[k] / 1e9 for k in RIDGE_POINTS),
                     *(row.latency_ms(r) for r in self.runtimes)]
            lines.append(f"    {row.label:{width}s}" + "".join(f"{c:>{w}.4g}" for c, w in zip(cells, ours_cols,
                                                                                              strict=True)))
        latency = [self.latency_summary(r) for r in self.runtimes]
        values = [self._summary(lambda r: r.params), self._summary(lambda r: r.macs),
                  *(self._summary(lambda r, k=k: r.roofline[k]) for k in RIDGE_POINTS), *(v for v, _, _ in latency)]
        lines.append(f"    {s.summary_label:{width}s}" + "".join(f"{v:>+{w}.1%}" for v, w in zip(values, ours_cols,
                                                                                                 strict=True)))
        spread = ", ".join(f"{r} {lo:+.1%} to {hi:+.1%}" for r, (_, lo, hi) in zip(self.runtimes, latency, strict=True))
        rounds = len(self.rows[0].latency_rounds[self.runtimes[0]])
        lines += [f"  {s.summary_label}: {s.summary_note}",
                  f"  latency {s.summary_label} round by round ({rounds} interleaved rounds): {spread}"]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "study": self.study.key, "title": self.study.title, "resolution": self.resolution,
            "threads": self.threads, "paper": {"columns": list(self.study.paper_columns),
                                               "rows": {k: list(v) for k, v in self.study.paper_rows}},
            "ours": [{"label": r.label, "params": r.params, "macs": r.macs, "roofline": r.roofline,
                      "latency_ms": {k: r.latency_ms(k) for k in self.runtimes},
                      "latency_rounds_ms": r.latency_rounds} for r in self.rows],
        }


def count_study_model(model: nn.Module, resolution: int, precision: str = "int8") -> tuple[int, int, dict[str, float]]:
    """(params, MACs, {ridge point name: effective MACs}) of one network at ``resolution``."""
    layers = roofline_layers(profile_layers(model, (resolution, resolution)), precision)
    effective = sweep(layers, list(RIDGE_POINTS.values()))
    return count_params(model), sum(la.macs for la in layers), dict(zip(RIDGE_POINTS, map(float, effective),
                                                                         strict=True))


def run_study(key: str, config: StudyConfig, progress: bool = False) -> StudyResult:
    """Count and time the models of study ``key`` (``STUDIES``) as ``config`` says."""
    from ..bench.environment import default_threads
    from ..testing import make_nondegenerate
    from .measure import prepare_runtime, time_interleaved

    config.validate()
    if key not in STUDIES:
        raise UserError(f"unknown study {key!r}; choose from {', '.join(STUDIES)}")
    study = STUDIES[key]
    res = config.resolution or study.resolution
    threads = config.threads or default_threads()
    rows, fns = [], {}
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with tempfile.TemporaryDirectory(prefix="mnv4-ablate-") as tmp, torch.random.fork_rng():
            for m in study.models:
                torch.manual_seed(0)
                model = m.build()
                rows.append(StudyRow(m.label, *count_study_model(model, res, config.precision)))
                # Trained-like BN statistics: random-init BN leaves slow float denormals in deep layers.
                make_nondegenerate(model, input_size=(res, res), batch_size=2, passes=1)
                example = torch.randn(1, 3, res, res)
                for runtime in config.runtimes:
                    if progress:
                        print(f"{study.key}: preparing {m.label} / {runtime}", file=sys.stderr, flush=True)
                    workdir = Path(tmp) / f"{len(fns)}"
                    workdir.mkdir()
                    fns[m.label, runtime] = prepare_runtime(runtime, model, example, workdir, threads)
            per_round = time_interleaved(fns, config.rounds, config.runs_per_round, config.warmup)
    finally:
        torch.set_num_threads(previous_threads)
    for row in rows:
        row.latency_rounds = {r: [s * 1e3 for s in per_round[row.label, r]] for r in config.runtimes}
    return StudyResult(study, res, threads, list(config.runtimes), rows)
