"""``mnv4 roofline``: the paper's hardware-independent latency model (paper §3, App. F): per layer, swept or fitted."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from ..engine.config import NON_NEGATIVE
from ..errors import UserError
from ._common import COUNT, POSITIVE_NUMBER, SIZE, add_model_option, model_name, number


def _names(text: str) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()]


def register(sub: argparse._SubParsersAction) -> None:
    from ..roofline import BYTES_PER_ELEMENT, NAMED_PROFILES

    profiles = ", ".join(f"{k} ({rp})" for k, (rp, _) in NAMED_PROFILES.items())
    p = sub.add_parser(
        "roofline",
        help="roofline latency model: per-layer table, ridge-point sweep plot, or fit to bench results",
        description="Roofline model of paper §3 / App. F: per layer, MACs and bytes moved (weights + input + output "
        "activations at --precision), ModelTime = sum over layers of max(MACs/PeakMACs, bytes/PeakBW). Only the "
        "ridge point RP = PeakMACs/PeakBW (MACs/byte) changes rankings. Three modes: MODEL (per-layer table), "
        f"--sweep (RP 0..500, PNG), --fit bench.json (this machine's RP). Named profiles (paper Tab. 16): {profiles}.",
    )
    add_model_option(p, "a model (variant or spec file) for the per-layer table", positional=True)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--sweep", action="store_true", help="predicted latency of several models for RP 0..500")
    mode.add_argument("--fit", type=Path, metavar="RESULTS_JSON", help="fit this machine's RP to `mnv4 bench` output")
    p.add_argument("--precision", choices=list(BYTES_PER_ELEMENT), default=None,
                   help="bytes per element: int8 (1, the paper's fitted targets; default for MODEL/--sweep), fp16/bf16 "
                   "(2), fp32 (4); --fit defaults to each result's own dtype")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--profile", choices=list(NAMED_PROFILES), default=None,
                       help="named ridge point for the per-layer table (default pixel6-cpu)")
    where.add_argument("--rp", type=number(float, NON_NEGATIVE), default=None, help="a ridge point in MACs/byte")
    p.add_argument("--peak-macs", type=POSITIVE_NUMBER, default=None,
                   help="peak MACs/s of your hardware (with --peak-bw)")
    p.add_argument("--peak-bw", type=POSITIVE_NUMBER, default=None,
                   help="peak memory bandwidth, bytes/s (with --peak-macs)")
    p.add_argument("--resolution", type=SIZE, default=None, help="input size (default: each model's paper size)")
    p.add_argument("--top", type=COUNT, default=20, help="layers to list, heaviest first (default 20; 0 = all)")
    p.add_argument("--models", type=_names, default=None, help="--sweep: models (default: paper models + MNv3-L/S)")
    p.add_argument("--reference", default=None, help="--sweep: normalise by this model (default mobilenet_v3_large)")
    p.add_argument("--max-rp", type=POSITIVE_NUMBER, default=500.0, help="--sweep: last ridge point (default 500)")
    p.add_argument("--out", type=Path, default=None, help="--sweep: PNG path (default roofline_sweep.png)")
    p.add_argument("--backend", default=None, help="--fit: only this backend's results")
    p.set_defaults(func=run)


def _hardware(args):
    from ..roofline import Hardware

    if (args.peak_macs is None) != (args.peak_bw is None):
        raise UserError("give both --peak-macs (MACs/s) and --peak-bw (bytes/s), or neither")
    if args.peak_macs is None:
        return None
    return Hardware(args.peak_macs, args.peak_bw, name="your hardware")


def run(args: argparse.Namespace) -> int:
    if args.out is not None:  # before the sweep, not when the plot is saved
        from ..engine.outputs import check_output_file

        check_output_file(args.out)
    hardware = _hardware(args)
    if args.rp is not None and hardware is not None:
        raise UserError("--rp and --peak-macs/--peak-bw both set a ridge point; give one of them")
    args.model = model_name(args, required=False)
    if args.model and (args.sweep or args.fit is not None):
        raise UserError(f"--model ({args.model!r}) is for the per-layer table; with --sweep name models with "
                        "--models, --fit takes its models from the results file")
    if args.fit is not None:
        return run_fit(args)
    if args.sweep:
        return run_sweep(args, hardware)
    if not args.model:
        raise UserError("name a model with --model (per-layer table), or use --sweep or --fit RESULTS_JSON; see "
                        "mnv4 roofline -h")
    return run_layers(args, hardware)


def _ridge_point(args, hardware) -> tuple[float, str]:
    from ..roofline import NAMED_PROFILES, check_ridge_point

    if hardware is not None:
        return hardware.ridge_point, f"your hardware ({hardware.peak_macs:.3g} MACs/s / {hardware.peak_bw:.3g} B/s)"
    if args.rp is not None:
        return check_ridge_point(args.rp), "--rp"
    name = args.profile or "pixel6-cpu"
    return NAMED_PROFILES[name][0], NAMED_PROFILES[name][1]


def _si(value: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.2f}{unit}"
    return f"{value:.0f}"


def run_layers(args, hardware) -> int:
    from ..roofline import NAMED_PROFILES, effective_macs, model_roofline, model_time

    precision = args.precision or "int8"
    rp, rp_name = _ridge_point(args, hardware)  # bad input fails before any work
    layers, res = model_roofline(args.model, args.resolution, precision)
    total = effective_macs(layers, rp)
    ranked = sorted(layers, key=lambda layer: layer.effective_macs(rp), reverse=True)
    shown = ranked if args.top <= 0 else ranked[: args.top]
    print(f"{args.model} at {res}x{res}, {precision} ({_bytes_note(precision)}); ridge point {rp:g} MACs/byte = "
          f"{rp_name}")
    head = (f"{'#':>3s} {'layer':34s} {'kind':9s} {'shape':40s} {'MACs':>8s} {'bytes':>8s} {'MAC/B':>7s} "
            f"{'share':>6s} {'at RP':7s} {'named':>6s}")
    print(head)
    print("-" * len(head))
    for i, layer in enumerate(shown, 1):
        named = "".join("M" if layer.memory_bound(v) else "C" for v, _ in NAMED_PROFILES.values())
        intensity = "inf" if math.isinf(layer.intensity) else f"{layer.intensity:.1f}"
        print(f"{i:>3d} {layer.name[:34]:34s} {layer.kind:9s} {layer.shape[:40]:40s} {_si(layer.macs):>8s} "
              f"{_si(layer.bytes):>8s} {intensity:>7s} {100 * layer.effective_macs(rp) / total:>5.1f}% "
              f"{'memory' if layer.memory_bound(rp) else 'compute':7s} {named:>6s}")
    if len(shown) < len(layers):
        print(f"... {len(layers) - len(shown)} more layers (--top 0 lists all)")
    macs, nbytes = sum(la.macs for la in layers), sum(la.bytes for la in layers)
    n_mem = sum(la.memory_bound(rp) for la in layers)
    print(f"\nshare: the layer's part of ModelTime at this RP; 'at RP': memory bound when MACs/byte < RP. "
          f"'named': compute/memory bound at {', '.join(NAMED_PROFILES)}.")
    print(f"total {macs / 1e9:.3f} GMACs, {nbytes / 1e6:.2f} MB moved, {n_mem}/{len(layers)} layers memory bound; "
          f"predicted time = {total / 1e9:.3f} G effective MACs / PeakMACs "
          f"({total / macs:.2f}x the MAC count alone)")
    for name, (value, label) in NAMED_PROFILES.items():
        print(f"  {name:15s} RP {value:6.1f}: {effective_macs(layers, value) / 1e9:7.3f} G effective MACs  ({label})")
    if hardware is not None:
        print(f"predicted latency on your hardware: {model_time(layers, hardware) * 1e3:.3f} ms")
    return 0


def _bytes_note(precision: str) -> str:
    from ..roofline import bytes_per_element

    n = bytes_per_element(precision)
    return f"{n} byte{'s' if n > 1 else ''} per weight/activation element"


def run_sweep(args, hardware) -> int:
    import numpy as np

    from ..bench.catalog import DEFAULT_MODELS, REFERENCE_MODEL, catalog_entry
    from ..roofline import NAMED_PROFILES, model_roofline, sweep

    precision = args.precision or "int8"
    if not (math.isfinite(args.max_rp) and args.max_rp > 0):
        raise UserError(f"--max-rp must be a positive number, got {args.max_rp}")
    names = list(dict.fromkeys(args.models or DEFAULT_MODELS))
    reference = args.reference or (REFERENCE_MODEL if REFERENCE_MODEL in names else names[0])
    entries = [catalog_entry(n) for n in names]  # unknown names fail here, before any work
    if reference not in names:
        names.append(reference)
        entries.append(catalog_entry(reference))
    rps = np.linspace(0.0, args.max_rp, int(args.max_rp) + 1)
    layers = {e.label: model_roofline(e.name, args.resolution, precision)[0] for e in entries}
    curves = {label: sweep(model_layers, rps) for label, model_layers in layers.items()}
    ref_label = catalog_entry(reference).label
    normalised = {label: values / curves[ref_label] for label, values in curves.items()}
    marks = {"RP 0 (MACs)": 0.0} | {k: v for k, (v, _) in NAMED_PROFILES.items()} | {f"RP {args.max_rp:g}": args.max_rp}
    if hardware is not None:
        marks["your hardware"] = hardware.ridge_point
    print(f"predicted latency as G effective MACs (= ModelTime x PeakMACs; at RP 0 the MAC count), {precision} "
          f"({_bytes_note(precision)}); in brackets: relative to {ref_label} at the same RP")
    print(f"{'model':16s} " + " ".join(f"{k[:15]:>17s}" for k in marks))
    for e in entries:
        cells = []
        for rp in marks.values():
            value = sweep(layers[e.label], [rp])[0]
            rel = value / sweep(layers[ref_label], [rp])[0]
            cells.append(f"{value / 1e9:>8.3f} ({rel:5.2f})")
        print(f"{e.label:16s} " + " ".join(f"{c:>17s}" for c in cells))
    if hardware is not None:
        print(f"your hardware: RP {hardware.ridge_point:.1f}; "
              f"latency = effective MACs / {hardware.peak_macs:.3g} MACs/s")
    from ..plots import sweep_plot

    out = args.out or Path("roofline_sweep.png")
    shown = {k: v for k, (v, _) in NAMED_PROFILES.items() if v <= args.max_rp}
    path = sweep_plot(rps, curves, normalised, out, ref_label, shown, precision)
    print(f"\nwrote {path}")
    return 0


def run_fit(args) -> int:
    from ..bench import load_results
    from ..roofline import fit_ridge_point, model_roofline

    report = load_results(args.fit)
    ok = [r for r in report.records if r.ok]
    if args.backend:
        if args.backend not in report.backends:
            raise UserError(f"{args.fit} has no results for backend {args.backend!r}; it has: "
                             f"{', '.join(report.backends)}")
        ok = [r for r in ok if r.backend == args.backend]
    groups: dict[tuple[str, int], list] = {}
    for r in ok:
        groups.setdefault((r.backend, r.batch_size), []).append(r)
    groups = {k: v for k, v in groups.items() if len(v) >= 3}
    if not groups:
        raise UserError(f"{args.fit}: no backend has successful measurements of >= 3 models; a ridge point cannot "
                         "be fitted (run `mnv4 bench` with more models)")
    cache: dict = {}
    print(f"fitted ridge point per backend (grid 0..500 MACs/byte, least squares on log latency); bytes per element "
          f"from {'--precision ' + args.precision if args.precision else 'each result dtype'}")
    print("r_s: Spearman rank correlation of measured latency with the roofline prediction / with the MAC count "
          "(paper Tab. 16 reports 0.96-0.97 / 0.76-0.96 on phones)")
    head = (f"{'backend':12s} {'batch':>5s} {'n':>3s} {'RP MAC/B':>8s} {'GMAC/s':>8s} {'GB/s':>8s} {'log-RMSE':>8s} "
            f"{'r_s roof':>8s} {'r_s MACs':>8s}  {'RPs fitting as well':>19s}")
    print(head)
    print("-" * len(head))
    details = []
    for (backend, batch), rows in groups.items():
        precision = args.precision or ("fp16" if rows[0].dtype in ("fp16", "bf16") else
                                       "int8" if rows[0].dtype == "int8" else "fp32")
        layers = []
        for r in rows:
            key = (r.model, r.resolution, precision)
            if key not in cache:
                cache[key] = model_roofline(r.model, r.resolution, precision)[0]
            layers.append(cache[key])
        latencies = [r.median_ms / 1e3 / r.batch_size for r in rows]  # per image
        fit = fit_ridge_point(layers, latencies)
        bw = f"{fit.peak_bw / 1e9:8.2f}" if math.isfinite(fit.peak_bw) else f"{'inf':>8s}"
        print(f"{backend:12s} {batch:>5d} {len(rows):>3d} {fit.ridge_point:>8.1f} {fit.peak_macs / 1e9:>8.2f} {bw} "
              f"{fit.log_rmse:>8.3f} {fit.spearman_roofline:>8.3f} {fit.spearman_macs:>8.3f}  "
              f"{fit.ridge_point_range[0]:>8.1f} - {fit.ridge_point_range[1]:<8.1f}")
        details.append((backend, rows, fit, precision))
    print("log-RMSE: typical relative error of the fitted model (0.1 = ~10%). 'RPs fitting as well': within 1% of "
          "the best error -- a wide range means the measurements cannot pin the ridge point down (e.g. every layer "
          "memory bound throughout), so read the RP as a range.")
    for backend, rows, fit, precision in details:
        print(f"\n{backend} ({precision}): measured vs predicted ms per image")
        for r, pred in zip(rows, fit.predicted_s, strict=True):
            print(f"  {r.label:16s} {r.median_ms / r.batch_size:9.2f} {pred * 1e3:9.2f}")
    return 0
