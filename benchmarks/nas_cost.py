"""How well the NAS cost models predict measured latency, and how fast the table-only roofline cost is (one run).

1. Speed: ``analysis.profile_spec`` (per-layer profile from the table) vs building the network and running
   ``analysis.profile_layers``, on the five paper models at their native resolution, interleaved; and the roofline
   cost of a new random architecture with a cold and a warm part cache (what a search pays per sample).
2. Correlation: ``--n`` random neighbours of Conv-S and Conv-M (``random_architectures``); the latency table is
   filled for all of them (time and parts reported), then every architecture is exported and timed end to end in
   ONNX Runtime (batch 1, interleaved rounds), and each cost model's ranking is compared with the measured one
   (Spearman): the roofline at RP 0 (= MACs), at the paper's four ridge points and at this machine's ridge point
   fitted to these same measurements (in-sample: an upper bound for the roofline), and the latency table with and
   without the per-call overhead correction. Spearman is also given within each base family, where the sizes
   are closer and ranking is harder.

    python benchmarks/nas_cost.py --n 30 --resolution 224 --json nas_cost.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from mnv4.analysis import part_profile, profile_layers, profile_spec, spec_parts
from mnv4.bench.environment import capture_environment, default_threads
from mnv4.model import MobileNetV4
from mnv4.nas.cost import (
    LatencyTableCost,
    RooflineCost,
    measure_latency,
    random_architectures,
    roofline_cost,
    validate_cost,
)
from mnv4.nas.measure import time_interleaved
from mnv4.roofline import NAMED_PROFILES, fit_ridge_point, roofline_layers
from mnv4.specs import PAPER_MODELS


def profile_speed(rounds: int) -> list[dict]:
    """Seconds per call: the table-only profile (part cache cleared before each call) vs build + profile_layers."""
    rows = []
    for spec in PAPER_MODELS:
        size = (spec.resolution, spec.resolution)

        def from_table(spec=spec, size=size):
            part_profile.cache_clear()
            return profile_spec(spec, size)

        def from_network(spec=spec, size=size):
            return profile_layers(MobileNetV4(spec), size)

        assert from_table() == from_network(), spec.name  # the same records, or the speed is meaningless
        per_round = time_interleaved({"table": from_table, "network": from_network}, rounds, 1, warmup=1)
        table, network = statistics.median(per_round["table"]), statistics.median(per_round["network"])
        rows.append({"model": spec.description, "table_ms": table * 1e3, "network_ms": network * 1e3,
                     "speedup": network / table})
    return rows


def roofline_cost_speed(resolution: int, n: int = 200) -> dict:
    """Microseconds per call of a roofline cost on new random architectures: cold (nothing cached) and warm."""
    specs = random_architectures(n, seed=12345)
    part_profile.cache_clear()
    cost = roofline_cost("pixel6-cpu")
    start = time.perf_counter()
    cold = [cost(spec, resolution) for spec in specs]
    cold_s = time.perf_counter() - start
    start = time.perf_counter()
    warm = [cost(spec, resolution) for spec in specs]
    warm_s = time.perf_counter() - start
    assert cold == warm
    parts = len({p for spec in specs for _, p in spec_parts(spec, resolution)})
    return {"architectures": n, "distinct_parts": parts, "cold_us": cold_s / n * 1e6, "warm_us": warm_s / n * 1e6}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=30, help="random architectures (default 30)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resolution", type=int, default=224)
    p.add_argument("--threads", type=int, default=None, help="ORT intra-op threads (default: physical cores)")
    p.add_argument("--rounds", type=int, default=10, help="interleaved rounds of the end-to-end timing")
    p.add_argument("--table", type=Path, default=None, help="latency table file (default: a fresh temporary one)")
    p.add_argument("--skip-speed", action="store_true", help="only the correlation part")
    p.add_argument("--json", type=Path, default=None, help="write every number here")
    args = p.parse_args()
    threads = args.threads or default_threads()
    torch.set_num_threads(threads)
    out: dict = {"environment": capture_environment(threads), "args": {k: str(v) for k, v in vars(args).items()}}

    if not args.skip_speed:
        print("1. per-layer profile from the table vs from the built network (interleaved, median):")
        out["profile_speed"] = profile_speed(rounds=5)
        for row in out["profile_speed"]:
            print(f"  {row['model']:14s} table {row['table_ms']:8.2f} ms   network {row['network_ms']:9.1f} ms   "
                  f"{row['speedup']:7.0f}x")
        out["roofline_cost_speed"] = speed = roofline_cost_speed(args.resolution)
        print(f"  roofline cost per new architecture ({speed['architectures']} random, {speed['distinct_parts']} "
              f"distinct parts): {speed['cold_us']:.0f} us cold cache, {speed['warm_us']:.0f} us warm")

    specs = random_architectures(args.n, args.seed)
    groups = [s.name.split("-random")[0] for s in specs]
    with tempfile.TemporaryDirectory() as tmp:
        path = args.table or Path(tmp) / "latency_table.json"
        table = LatencyTableCost(path, threads=threads, progress=True)
        start = time.perf_counter()
        measured_parts = table.measure(specs, args.resolution)
        build_s = time.perf_counter() - start
        raw_table = LatencyTableCost(path, threads=threads, subtract_overhead=False)
        raw_table.name += " raw (no overhead correction)"
        print(f"\n2. latency table: {measured_parts} parts measured in {build_s:.0f} s "
              f"({build_s / max(measured_parts, 1):.2f} s per part: export + timing), {len(table.entries)} in table")
        measured = measure_latency(specs, args.resolution, threads, rounds=args.rounds, progress=True)

    layers = [roofline_layers(profile_spec(s, args.resolution)) for s in specs]
    fit = fit_ridge_point(layers, [m / 1e3 for m in measured.ms])
    costs = [roofline_cost(0.0), *(roofline_cost(name) for name in NAMED_PROFILES),
             RooflineCost(fit.ridge_point, label="fitted here, in-sample"), table, raw_table]
    result = validate_cost(costs, specs, args.resolution, measured=measured)
    print(result.format())
    within = result.spearman_within(groups)
    for group, rhos in within.items():
        print(f"Spearman within {group} neighbours ({groups.count(group)}):")
        for name, rho in rhos.items():
            print(f"  {name:40s} {rho:+.3f}")
    predicted_ms = [table(s, args.resolution) for s in specs]
    ratio = [p / m for p, m in zip(predicted_ms, measured.ms, strict=True)]
    print(f"latency table sum / measured end to end: median {statistics.median(ratio):.2f} "
          f"(min {min(ratio):.2f}, max {max(ratio):.2f})")
    print(f"fitted ridge point of this machine (ORT fp32, int8 bytes): {fit.ridge_point:.1f} MACs/byte "
          f"(range {fit.ridge_point_range[0]:.1f}-{fit.ridge_point_range[1]:.1f}), log-RMSE {fit.log_rmse:.3f}")
    out.update(
        architectures=list(result.names), measured_ms=measured.ms, spread_ms=measured.spread_ms,
        costs={name: list(pred) for (name, _), pred in zip(result.costs, result.predicted, strict=True)},
        spearman=result.spearman, spearman_within=within, table_parts=len(table.entries), table_build_s=build_s,
        table_over_measured=ratio, fitted_ridge_point=fit.ridge_point,
    )
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
