"""The paper's hardware-independent latency model (paper §3, App. F and Tab. 16).

Per counted layer i (``analysis.profile_layers``):

    MACTime_i = MACs_i / PeakMACs
    MemTime_i = Bytes_i / PeakBW,   Bytes_i = (weights + input activations + output activations) x bytes per element
    ModelTime = sum_i max(MACTime_i, MemTime_i)

The ridge point RP = PeakMACs / PeakBW (MACs per byte) alone fixes how models rank: dividing by 1/PeakMACs,
ModelTime x PeakMACs = sum_i max(MACs_i, RP x Bytes_i), the model's "effective MACs" on hardware with that RP. RP = 0
is "memory is free", i.e. plain MAC counting. Layers whose operational intensity (MACs_i / Bytes_i) is below RP are
memory bound there, the others compute bound.

The paper does not state the bytes per element it used or which activations it counted (§3, App. F); we count input and
output activations and default to 1 byte per element (int8), the precision of all four fitted targets in its Tab. 16.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .analysis import LayerProfile
from .errors import UserError
from .specs import MIN_INPUT_SIZE

BYTES_PER_ELEMENT = {"int8": 1, "fp16": 2, "bf16": 2, "fp32": 4}

# The paper's empirically fitted ridge points, MACs/byte, all int8 [paper Tab. 16].
NAMED_PROFILES: dict[str, tuple[float, str]] = {
    "pixel6-cpu": (31.2, "Pixel 6 CPU (int8)"),
    "s23-cpu": (39.7, "Samsung S23 CPU (int8)"),
    "pixel4-dsp": (347.3, "Pixel 4 Hexagon DSP (int8)"),
    "pixel8-edgetpu": (433.8, "Pixel 8 EdgeTPU (int8)"),
}

# The sweep range of the paper's Fig. 2 / App. F: 0 (MAC-only) to 500 MACs/byte (accelerator-like).
SWEEP_MAX_RP = 500.0


def bytes_per_element(precision: str) -> int:
    if precision not in BYTES_PER_ELEMENT:
        raise UserError(f"unknown precision {precision!r}; choose one of {', '.join(BYTES_PER_ELEMENT)}")
    return BYTES_PER_ELEMENT[precision]


@dataclass(frozen=True)
class RooflineLayer:
    """One layer as the roofline model sees it."""

    name: str
    kind: str
    shape: str
    macs: int
    bytes: int  # weights + input + output activations, at the chosen precision

    @property
    def intensity(self) -> float:
        """Operational intensity, MACs per byte moved (inf for a layer that moves nothing)."""
        return self.macs / self.bytes if self.bytes else math.inf

    def effective_macs(self, ridge_point: float) -> float:
        """max(MACs, RP x bytes): the layer's time in units of 1 / PeakMACs."""
        return max(float(self.macs), ridge_point * self.bytes)

    def memory_bound(self, ridge_point: float) -> bool:
        return self.intensity < ridge_point


def roofline_layers(profile: Sequence[LayerProfile], precision: str = "int8") -> list[RooflineLayer]:
    """Turn ``analysis.profile_layers`` records into (MACs, bytes) per layer."""
    per_elem = bytes_per_element(precision)
    return [
        RooflineLayer(p.name, p.kind, p.shape, p.macs, (p.weight_elems + p.input_elems + p.output_elems) * per_elem)
        for p in profile
    ]


@dataclass(frozen=True)
class Hardware:
    """Peak compute (MACs/s) and memory bandwidth (bytes/s); only their ratio (the ridge point) affects rankings."""

    peak_macs: float
    peak_bw: float
    name: str = "custom"

    def __post_init__(self):
        for label, value in (("peak MACs/s", self.peak_macs), ("peak bandwidth (bytes/s)", self.peak_bw)):
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise UserError(f"{label} must be a positive finite number, got {value!r}")

    @property
    def ridge_point(self) -> float:
        return self.peak_macs / self.peak_bw


def check_ridge_point(ridge_point: float) -> float:
    if not (math.isfinite(ridge_point) and ridge_point >= 0):
        raise UserError(f"ridge point must be a finite number >= 0 MACs/byte, got {ridge_point!r}")
    return float(ridge_point)


def effective_macs(layers: Sequence[RooflineLayer], ridge_point: float) -> float:
    """sum_i max(MACs_i, RP x Bytes_i) = ModelTime x PeakMACs at ridge point RP."""
    rp = check_ridge_point(ridge_point)
    return sum(layer.effective_macs(rp) for layer in layers)


def model_time(layers: Sequence[RooflineLayer], hardware: Hardware) -> float:
    """ModelTime in seconds: sum_i max(MACs_i / PeakMACs, Bytes_i / PeakBW)."""
    return sum(max(layer.macs / hardware.peak_macs, layer.bytes / hardware.peak_bw) for layer in layers)


def sweep(layers: Sequence[RooflineLayer], ridge_points: Sequence[float]) -> np.ndarray:
    """Effective MACs (ModelTime x PeakMACs) at each ridge point; non-decreasing in RP."""
    macs = np.array([layer.macs for layer in layers], dtype=np.float64)
    nbytes = np.array([layer.bytes for layer in layers], dtype=np.float64)
    rps = np.array([check_ridge_point(rp) for rp in ridge_points], dtype=np.float64)
    return np.maximum(macs[None, :], rps[:, None] * nbytes[None, :]).sum(axis=1)


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation (ties get their average rank): the Pearson correlation of the ranks."""
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or len(a) < 2:
        raise UserError(f"spearman needs two equally long 1-D sequences of >= 2 values, got {a.shape} and {b.shape}")
    ra, rb = _average_ranks(a), _average_ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = math.sqrt(float((ra * ra).sum() * (rb * rb).sum()))
    return float((ra * rb).sum() / denom) if denom else float("nan")


def _average_ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.arange(len(values), dtype=np.float64)
    for v in np.unique(values):  # ties share the mean of their ranks
        tied = values == v
        if tied.sum() > 1:
            ranks[tied] = ranks[tied].mean()
    return ranks


@dataclass(frozen=True)
class RidgeFit:
    """A machine's ridge point and peaks fitted to measured latencies (seconds) of several models."""

    ridge_point: float
    ridge_point_range: tuple[float, float]  # every RP that fits (almost) as well: where the data cannot tell apart
    peak_macs: float  # MACs/s implied by the fit
    log_rmse: float  # root-mean-square error of log(latency), i.e. ~relative error
    spearman_roofline: float  # rank correlation: measured latency vs roofline prediction at the fitted RP
    spearman_macs: float  # ... vs MAC count (RP = 0)
    predicted_s: tuple[float, ...]

    @property
    def peak_bw(self) -> float:
        return self.peak_macs / self.ridge_point if self.ridge_point > 0 else math.inf


def fit_ridge_point(
    model_layers: Sequence[Sequence[RooflineLayer]],
    latencies_s: Sequence[float],
    ridge_points: Sequence[float] | None = None,
) -> RidgeFit:
    """Fit latency ~= effective_macs(RP) / PeakMACs by least squares on log latency over a grid of RPs.

    For a fixed RP the best PeakMACs has a closed form (the geometric mean of effective MACs / latency), so the fit
    is a 1-D search. The paper fits RP "empirically" without saying how (Tab. 16); log error weighs small and large
    models alike, as a rank correlation does.
    """
    if len(model_layers) != len(latencies_s):
        raise UserError("need one latency per model")
    if len(latencies_s) < 3:
        raise UserError(f"fitting a ridge point needs latencies of at least 3 models, got {len(latencies_s)}")
    y = np.asarray(latencies_s, dtype=np.float64)
    if not np.all(np.isfinite(y) & (y > 0)):
        raise UserError("latencies must be positive finite numbers")
    grid = np.asarray(ridge_points if ridge_points is not None else np.linspace(0, SWEEP_MAX_RP, 5001))
    eff = np.stack([sweep(layers, grid) for layers in model_layers], axis=1)  # (grid, models)
    log_ratio = np.log(y)[None, :] - np.log(eff)  # log(1 / PeakMACs) per model and RP
    offset = log_ratio.mean(axis=1)
    rmse = np.sqrt(((log_ratio - offset[:, None]) ** 2).mean(axis=1))
    best = int(np.argmin(rmse))  # first minimum: the smallest RP among equals
    # Above the RP where every layer of every model is memory bound, latency ratios stop changing and only PeakBW is
    # identifiable; report the whole range of RPs within 1% (relative log error) of the best fit.
    near = grid[rmse <= rmse[best] * 1.01 + 1e-3 * 0.01]
    predicted = eff[best] * math.exp(offset[best])
    macs = [sum(layer.macs for layer in layers) for layers in model_layers]
    return RidgeFit(
        ridge_point=float(grid[best]),
        ridge_point_range=(float(near.min()), float(near.max())),
        peak_macs=float(math.exp(-offset[best])),
        log_rmse=float(rmse[best]),
        spearman_roofline=spearman(y, predicted),
        spearman_macs=spearman(y, macs),
        predicted_s=tuple(float(p) for p in predicted),
    )


def model_roofline(
    name: str, resolution: int | None = None, precision: str = "int8"
) -> tuple[list[RooflineLayer], int]:
    """(layers, resolution) of a named model (any mnv4 variant or MobileNetV3 baseline) at ``resolution``
    (default: its paper resolution)."""
    from .analysis import profile_layers
    from .bench.catalog import catalog_entry

    entry = catalog_entry(name)
    res = resolution or entry.resolution
    if res < MIN_INPUT_SIZE:
        raise UserError(f"resolution must be >= {MIN_INPUT_SIZE}, got {res}")
    return roofline_layers(profile_layers(entry.build(), (res, res)), precision), res
