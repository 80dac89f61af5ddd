"""Cost models T(a) for the search reward -- TEMPORARY minimal version.

Engineer D2 owns this module (analytic roofline profile from the spec, a measured per-block latency table, and
``validate_cost``); this file only satisfies the interface the search uses until that branch is merged:

    roofline_cost(ridge_point, precision="int8") -> CostModel   # a named profile (mnv4.roofline) or MACs/byte
    CostModel: cost(spec, resolution) -> float, with attributes ``name`` and ``unit``
    validate_cost(cost, specs, resolution) -> result with ``spearman`` and per-architecture ``rows``

Here the roofline cost counts each conv's MACs and tensor sizes from the table as ``mnv4.analysis.profile_layers``
does (rows it does not know: the model is built on the ``meta`` device and profiled); ``validate_cost`` times each
model with PyTorch eager on this machine's CPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import torch

from ..errors import UserError
from ..roofline import (
    NAMED_PROFILES,
    RooflineLayer,
    bytes_per_element,
    check_ridge_point,
    effective_macs,
    roofline_layers,
)
from ..specs import ModelSpec


def parse_ridge_point(value: float | str) -> tuple[float, str]:
    """(ridge point in MACs/byte, label) from a profile name of ``mnv4.roofline.NAMED_PROFILES`` or a number."""
    if isinstance(value, str) and value in NAMED_PROFILES:
        rp, label = NAMED_PROFILES[value]
        return rp, f"{value} ({label}, RP {rp:g})"
    try:
        rp = float(value)
    except (TypeError, ValueError):
        raise UserError(
            f"unknown ridge point {value!r}: a profile name ({', '.join(NAMED_PROFILES)}) or a number of MACs/byte"
        ) from None
    try:
        return check_ridge_point(rp), f"RP {rp:g} MACs/byte"
    except ValueError as err:
        raise UserError(str(err)) from None


def _conv(in_ch: int, out_ch: int, kernel: int, stride: int, size: int, groups: int = 1) -> tuple[int, ...]:
    """(MACs, weight, input and output elements, output size) of one conv as ``profile_layers`` counts them."""
    out_size = (size + 2 * ((kernel - 1) // 2) - kernel) // stride + 1
    weight = out_ch * in_ch // groups * kernel * kernel
    out_elems = out_ch * out_size * out_size
    return out_elems * in_ch // groups * kernel * kernel, weight, in_ch * size * size, out_elems, out_size


def _row_counts(row, in_ch: int, size: int) -> tuple[list[tuple[int, ...]], int]:
    """The counted layers of one Conv / FusedIB / UIB row, and the output size."""
    from ..layers import make_divisible
    from ..specs import UIB, Conv

    if isinstance(row, Conv):
        layer = _conv(in_ch, row.out, row.kernel, row.stride, size)
        return [layer], layer[-1]
    mid = make_divisible(in_ch * row.expand)
    if not isinstance(row, UIB):  # FusedIB
        expand = _conv(in_ch, mid, row.kernel, row.stride, size)
        return [expand, _conv(mid, row.out, 1, 1, expand[-1])], expand[-1]
    layers = []
    if row.start_dw:
        layers.append(_conv(in_ch, in_ch, row.start_dw, 1 if row.mid_dw else row.stride, size, in_ch))
        size = layers[-1][-1]
    layers.append(_conv(in_ch, mid, 1, 1, size))
    if row.mid_dw:
        layers.append(_conv(mid, mid, row.mid_dw, row.stride, size, mid))
        size = layers[-1][-1]
    layers.append(_conv(mid, row.out, 1, 1, size))
    return layers, size


@lru_cache(maxsize=16384)
def _spec_layers(spec: ModelSpec, resolution: int, precision: str) -> tuple[RooflineLayer, ...]:
    """The roofline layers of ``spec`` counted from the table alone (no model built): a search evaluates thousands
    of architectures. MQA rows, width multipliers and anti-aliasing fall back to profiling the model."""
    from ..specs import MQA

    if spec.width != 1.0 or spec.aa or any(isinstance(row, MQA) for row in spec.blocks()):
        return tuple(_model_layers(spec, resolution, precision))
    stem = _conv(3, spec.stem, 3, 2, resolution)
    counts, size, in_ch = [stem], stem[-1], spec.stem
    for row in spec.blocks():
        layers, size = _row_counts(row, in_ch, size)
        counts += layers
        in_ch = row.out
    counts.append(_conv(in_ch, spec.head_hidden, 1, 1, 1))  # conv_head on the pooled vector
    counts.append((1000 * spec.head_hidden, 1000 * spec.head_hidden + 1000, spec.head_hidden, 1000, 1))
    per_elem = bytes_per_element(precision)
    return tuple(RooflineLayer(f"layer{i}", "", "", macs, (w + i_n + o_n) * per_elem)
                 for i, (macs, w, i_n, o_n, _) in enumerate(counts))


def _model_layers(spec: ModelSpec, resolution: int, precision: str) -> list:
    from ..analysis import profile_layers
    from ..model import MobileNetV4

    with torch.device("meta"):
        model = MobileNetV4(spec, num_classes=1000)
    return roofline_layers(profile_layers(model, (resolution, resolution)), precision)


@dataclass(frozen=True)
class RooflineCost:
    """The paper's ModelTime x PeakMACs at a ridge point: sum over layers of max(MACs, RP x bytes)."""

    ridge_point: float
    precision: str = "int8"
    name: str = "roofline"
    unit: str = "effective MACs"

    def __call__(self, spec: ModelSpec, resolution: int) -> float:
        return effective_macs(_spec_layers(spec, resolution, self.precision), self.ridge_point)


def roofline_cost(ridge_point: float | str, precision: str = "int8") -> RooflineCost:
    rp, label = parse_ridge_point(ridge_point)
    return RooflineCost(rp, precision, name=f"roofline at {label}, {precision}")


@dataclass(frozen=True)
class ValidationRow:
    name: str
    cost: float
    latency_ms: float


@dataclass(frozen=True)
class CostValidation:
    spearman: float
    rows: tuple[ValidationRow, ...]
    runtime: str


def validate_cost(cost, specs: Sequence[ModelSpec], resolution: int, runs: int = 20) -> CostValidation:
    """Spearman correlation between ``cost`` and the measured end-to-end latency (PyTorch eager, batch 1, CPU) of
    ``specs``, with one row per architecture."""
    from ..bench.timing import time_callable
    from ..model import MobileNetV4
    from ..roofline import spearman
    from ..testing import make_nondegenerate

    rows = []
    for spec in specs:
        with torch.random.fork_rng():
            model = make_nondegenerate(MobileNetV4(spec), input_size=(resolution, resolution), batch_size=2,
                                       passes=1)
        x = torch.randn(1, 3, resolution, resolution)
        with torch.inference_mode():
            timing = time_callable(lambda m=model, x=x: m(x), warmup=3, runs=runs)
        rows.append(ValidationRow(spec.name, float(cost(spec, resolution)), timing.median_ms))
    rho = spearman([r.cost for r in rows], [r.latency_ms for r in rows])
    return CostValidation(rho, tuple(rows), f"PyTorch eager, {torch.get_num_threads()} threads, batch 1")
