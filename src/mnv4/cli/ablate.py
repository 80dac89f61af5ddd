"""``mnv4 ablate``: the paper's attention design studies (Tabs. 2 and 3) on this machine, beside the paper's figures."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._common import BATCH, COUNT, SIZE


def _names(text: str) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ablate",
        help="the paper's MQA-vs-MHSA and K/V-downsampling studies: params, MACs, roofline, latency here",
        description="Re-run the paper's attention design studies. mqa (Tab. 2): MNv4-Conv-L (the size of the "
        "paper's base) vs the same + 3 multi-head self-attention blocks vs + 3 Mobile MQA blocks, in its /32 stage. "
        "kv (Tab. 3): MNv4-Hybrid-M with and without the stride-2 DW conv on keys and values. For each model: "
        "params, MACs, the roofline at RP 0 and the paper's four ridge points, and latency (batch 1) on this "
        "machine's runtimes, timed interleaved; printed beside the paper's table, whose figures come from its own "
        "models and phones (compare the relative changes).",
    )
    p.add_argument("--study", type=_names, default=["mqa", "kv"], help="comma-separated: mqa, kv (default both)")
    p.add_argument("--runtimes", type=_names, default=["eager", "deployed", "onnxruntime"],
                   help="comma-separated: eager, deployed, compile, onnxruntime, litert "
                   "(default eager,deployed,onnxruntime)")
    p.add_argument("--resolution", type=SIZE, default=None,
                   help="input size for every study (default: 384 for mqa, 256 for kv)")
    p.add_argument("--threads", type=BATCH, default=None, help="CPU threads (default: one per physical core)")
    p.add_argument("--rounds", type=BATCH, default=None, help="interleaved timing rounds (default 5)")
    p.add_argument("--runs", type=BATCH, default=None,
                   help="timed runs per model and runtime in each round (default 3)")
    p.add_argument("--warmup", type=COUNT, default=None, help="untimed runs first (default 2)")
    p.add_argument("--json", type=Path, default=None, help="also write every number to this JSON file")
    p.add_argument("--quick", action="store_true",
                   help="64 px, 1 round of 1 run: checks the pipeline in seconds (numbers not meaningful)")
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace):
    from ..nas.studies import StudyConfig

    values = {"studies": args.study, "runtimes": args.runtimes}
    if args.quick:
        values.update(resolution=64, rounds=1, runs_per_round=1, warmup=0)
    for key, value in {"resolution": args.resolution, "threads": args.threads, "rounds": args.rounds,
                       "runs_per_round": args.runs, "warmup": args.warmup}.items():
        if value is not None:
            values[key] = value
    return StudyConfig(**values).validate()


def run(args: argparse.Namespace) -> int:
    from ..engine.outputs import check_output_file, write_json
    from ..nas.studies import run_study

    config = config_from_args(args)
    if args.json is not None:  # before the measurements, not after them
        check_output_file(args.json, "--json")
    results = []
    for key in config.studies:
        result = run_study(key, config, progress=True)
        results.append(result)
        print(result.format() + "\n", flush=True)
    if args.quick:
        print("quick run: 64 px, one timed run each -- a pipeline check, not a measurement")
    if args.json is not None:
        write_json(args.json, [r.to_dict() for r in results])
        print(f"wrote {args.json}")
    return 0
