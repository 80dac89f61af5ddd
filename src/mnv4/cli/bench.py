"""``mnv4 bench``: the paper's latency/accuracy comparison (its Fig. 1), measured on this machine."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._common import BATCH, COUNT, POSITIVE_NUMBER, SIZE


def _names(text: str) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()]


def _sizes(text: str) -> list[int]:
    return [BATCH(n) for n in _names(text)]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="latency of MNv4 vs MobileNetV3 on every runtime here; table, CSV/JSON, Pareto plot",
        description="Time the five paper models at their paper resolutions and torchvision's MobileNetV3-Large/-Small "
        "(random init; nothing is downloaded) on the runtimes available here. The default run (about 3 minutes on "
        "an idle 2-core CPU; the expected duration is printed first): PyTorch eager, deployed (BN folded, "
        "channels_last), torch.compile, ONNX Runtime, and CUDA (fp32 and bf16, with a batch-size sweep) on a GPU. "
        "--full adds the backends that take minutes per model to build: LiteRT, ExecuTorch (fp32 and int8), "
        "AOTInductor. "
        "Protocol: fixed threads, warm-up, many timed runs (capped by a time budget per cell), median and p90; "
        "export/compile time reported apart. Writes bench.csv, bench.json and bench_pareto.png into --out, and the "
        "toolkits' own log output into --out/toolkits.log.",
    )
    p.add_argument("--models", type=_names, default=None,
                   help="comma-separated names (mnv4 variants, mobilenet_v3_large, mobilenet_v3_small); "
                   "default: the five paper models + both MobileNetV3s")
    p.add_argument("--backends", type=_names, default=None,
                   help="comma-separated: eager, deployed, compile, aoti, onnxruntime, litert, executorch, "
                   "executorch-int8, cuda-fp32, cuda-bf16; default: eager, deployed, compile, onnxruntime and the "
                   "CUDA ones (one that cannot run here is skipped with the reason)")
    p.add_argument("--full", action="store_true",
                   help="the full sweep: every backend available here, also LiteRT, ExecuTorch (fp32, int8) and "
                   "AOTInductor, which take half a minute to minutes per model to build (about half an hour on an "
                   "idle 2-core CPU)")
    p.add_argument("--threads", type=BATCH, default=None,
                   help="CPU threads for every backend (default: one per physical core)")
    p.add_argument("--batch-size", type=BATCH, default=1, help="CPU batch size (default 1, as on phones)")
    p.add_argument("--cuda-batch-sizes", type=_sizes, default=None, help="CUDA sweep, default 1,8,32,128")
    p.add_argument("--runs", type=BATCH, default=None, help="timed runs per cell, at most (default 50)")
    p.add_argument("--warmup", type=COUNT, default=None, help="untimed runs first (default 5)")
    p.add_argument("--max-seconds", type=POSITIVE_NUMBER, default=None,
                   help="timed seconds per cell before runs are cut (default 4; at least 10 runs)")
    p.add_argument("--resolution", type=SIZE, default=None, help="one input size for all models instead of theirs")
    p.add_argument("--out", type=Path, default=Path("bench-results"), help="output folder (default ./bench-results)")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG (no matplotlib needed)")
    p.add_argument("--quick", action="store_true",
                   help="64 px, 1 warm-up + 3 runs: checks the pipeline in seconds (numbers not meaningful)")
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace):
    from ..bench import BenchConfig

    overrides = {k: v for k, v in {
        "models": args.models, "backends": args.backends, "full": args.full or None, "threads": args.threads,
        "batch_size": args.batch_size,
        "runs": args.runs, "warmup": args.warmup, "max_seconds": args.max_seconds, "resolution": args.resolution,
        "cuda_batch_sizes": args.cuda_batch_sizes,
    }.items() if v is not None}
    return (BenchConfig.quick(**overrides) if args.quick else BenchConfig(**overrides)).validate()


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def plan_text(config) -> str:
    """What the run will do and about how long it takes; for the default run, what it leaves out."""
    from ..bench.backends import default_backend_names, resolve_backends
    from ..bench.catalog import resolve_models
    from ..bench.runner import expected_seconds, full_sweep_backends

    backends, _ = resolve_backends(config.backends, config.full)
    models = resolve_models(config.models)
    lines = [f"expected duration: about {_duration(expected_seconds(config, backends))} on an idle 2-core x86 CPU "
             f"(longer on a busy or slower one): {_count(len(models), 'model')} x {_count(len(backends), 'backend')} "
             f"({', '.join(b.name for b in backends)})"]
    if config.backends is None and not config.full:
        left_out = [n for n in default_backend_names(full=True) if n not in default_backend_names()]
        full = _duration(expected_seconds(config, full_sweep_backends()))
        lines.append(f"the default run leaves out {', '.join(left_out)} (half a minute to minutes per model to "
                     f"build): "
                     f"`mnv4 bench --full` runs every backend available here (about {full}), or name some with "
                     f"--backends")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    import shutil
    import tempfile

    from ..bench import format_table, run_benchmark, write_csv, write_json
    from ..bench.catalog import REFERENCE_MODEL, catalog_entry
    from ..bench.results import format_environment, format_throughput
    from ..engine.outputs import check_output_folder
    from ..export.toolkit_logs import toolkit_logs_to

    config = config_from_args(args)
    check_output_folder(args.out)  # a file, a folder under a file, not writable: before the run, not after it
    print(plan_text(config), flush=True)
    # The toolkits' own log lines (TensorFlow/LiteRT, torch, torchao, ExecuTorch...) go to a file, not between the
    # progress bar and the table; the file is kept in --out when it holds anything.
    with tempfile.TemporaryDirectory(prefix="mnv4-bench-log-") as tmp:
        log = Path(tmp) / "toolkits.log"
        with toolkit_logs_to(log) as screen:
            report = run_benchmark(config, progress_stream=screen)
        args.out.mkdir(parents=True, exist_ok=True)
        chatter = log.read_text(errors="replace").splitlines() if log.exists() else []
        if chatter:
            shutil.copyfile(log, args.out / "toolkits.log")
    print(format_environment(report))
    print()
    print(format_table(report))
    ref = catalog_entry(REFERENCE_MODEL).label
    print(f"\nmedian ms per batch of {config.batch_size} ({ref} latency / model latency on the same backend); "
          f"p90, runs and setup times are in the CSV/JSON.")
    if config.resolution:
        print(f"all models at {config.resolution}x{config.resolution} (not their paper resolutions)")
    failures = [r for r in report.records if r.status in ("failed", "n/a")]
    for r in failures:
        print(f"{r.status}: {r.label} on {r.backend}: {r.note}")
    if throughput := format_throughput(report):
        print("\n" + throughput)
    paths = [write_csv(report, args.out / "bench.csv"), write_json(report, args.out / "bench.json")]
    if not args.no_plot:
        from ..plots import pareto_plot

        title = "quick run: 64 px, 3 runs -- pipeline check, not a measurement" if args.quick else None
        try:
            paths.append(pareto_plot(report, args.out / "bench_pareto.png", title=title))
        except ValueError as err:
            print(f"no plot: {err}")
    print("\nwrote " + ", ".join(str(p) for p in paths))
    if chatter:
        print(f"the toolkits' log output ({len(chatter)} lines) is in {args.out / 'toolkits.log'}")
    return 0
