"""``mnv4 search``: the paper's two-stage TuNAS search for a latency target; a thin shell over ``mnv4.nas``."""

from __future__ import annotations

import argparse
import sys

from ..engine.config import Range
from ..nas.config import SearchConfig
from ._common import Flag, add_flag_table, flag_values, number, run_command, run_flags

FLAGS: list[Flag] = [
    Flag("--space", "space", "search space: conv_small, conv_medium, conv_large (paper sizes) or tiny (CPU proxy)"),
    Flag("--data", "data", "ImageFolder root with train/<class>/* (part of it is held out to score architectures)"),
    *run_flags("out", out="output folder: spec file, search.json, history.csv, search.png, checkpoints (a new "
                          "search refuses a folder that holds another run: --resume auto continues it)"),
    Flag("--name", "name", "name of the found architecture (default mnv4_nas_<space>)"),
    Flag("--stage", "stage", "coarse (widths, depths), fine (DW slots, expansions), both (default: coarse, then "
                             "fine) or joint (every decision in one stage, as TuNAS)"),
    Flag("--base", "base", "--stage fine: keep this architecture's widths/depths (variant or spec file; default: "
                           "the space's paper model)"),
    Flag("--fix-expansion", "fix_expansion", "fine stage: every expansion at this value (the paper: 4)"),
    Flag("--target", "target", "cost target T0 in the cost model's unit (roofline: effective MACs)"),
    Flag("--target-model", "target_model", "T0 = the cost of this variant or spec file (x --target-scale)"),
    Flag("--target-scale", "target_scale", "with --target-model: T0 = scale x its cost (e.g. 0.8)"),
    Flag("--cost", "cost", "roofline (default; the paper's model at --rp) or latency-table (ONNX Runtime latency of "
                           "each block measured on this machine, kept in --latency-table)"),
    Flag("--latency-table", "latency_table", "the latency table's JSON file (default ~/.cache/mnv4/)"),
    Flag("--rp", "ridge_point", "roofline ridge point: a profile (pixel6-cpu, s23-cpu, pixel4-dsp, pixel8-edgetpu) "
                                "or MACs/byte (`mnv4 roofline --fit` measures yours)"),
    Flag("--precision", "precision", "roofline bytes per element: int8 (default), fp16, bf16, fp32"),
    Flag("--resolution", "resolution", "input size the cost is taken at (default: the space's)"),
    Flag("--reward", "reward", "abs (TuNAS, default), mnas or mnas_hard (MnasNet)"),
    Flag("--beta", "beta", "reward slope / exponent, < 0 (default -0.1)"),
    *run_flags("image_size", image_size="supernet training resolution (default: the cost resolution)"),
    *run_flags("epochs", epochs="supernet epochs per stage"),
    Flag("--steps", "steps", "steps per stage (instead of --epochs)"),
    *run_flags("global_batch"),
    Flag("--optimizer", "optimizer", "supernet optimiser: adamw (default) or rmsprop (TuNAS)"),
    *run_flags("lr", "weight_decay", lr="supernet peak learning rate", weight_decay="supernet weight decay"),
    *run_flags("soft_labels"),
    Flag("--holdout-fraction", "holdout_fraction", "part of train/ held out for the quality batches"),
    Flag("--rl-lr", "rl_lr", "controller learning rate (default 3e-4 x global batch / 256)"),
    *run_flags("device", "workers", "threads", "seed", "resume", "save_every_steps", "progress",
               seed="seed of everything random in the search",
               save_every_steps="checkpoint every N steps (and at the end of each stage)"),
    Flag("--plot", "plot", "write search.png (needs matplotlib)"),
]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "search",
        help="search an architecture for your latency target (the paper's two-stage TuNAS NAS)",
        description="Two-stage TuNAS search (paper §6.1): a weight-sharing supernet trains on --data while a "
        "controller learns, by REINFORCE on reward = top-1 + beta |cost/T0 - 1|, which stage widths/depths "
        "(coarse) and then which UIB blocks (fine) to pick. The cost is the paper's roofline model at the ridge "
        "point --rp. Writes the architecture as a spec file that `mnv4 train/export/bench/roofline --model` take. "
        "Multi-GPU: torchrun --nproc-per-node N -m mnv4.cli search <same flags>.",
    )
    add_flag_table(p, FLAGS, SearchConfig, "quality_bn='running'")
    p.add_argument("--list-spaces", action="store_true", help="print the search spaces and exit")
    p.add_argument("--validate-cost", type=number(int, Range(30)), nargs="?", const=30, default=None, metavar="N",
                   help="instead of searching: measure N (>= 30, default 30) random architectures of --space and "
                   "print how well the cost predicts their latency here (Spearman)")
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace, require_target: bool = True) -> SearchConfig:
    given = flag_values(args, FLAGS, SearchConfig)
    values = {k: v for k, v in given.items() if v is not None}
    if not require_target and "target" not in values and "target_model" not in values:
        values["target"] = 1.0  # --validate-cost needs no target
    return SearchConfig(**values)


def run(args: argparse.Namespace) -> int:
    import logging

    from ..nas import SPACES

    if args.list_spaces:
        for space in SPACES.values():
            print(f"{space.name:12s} {space.description}; {len(space.decisions)} decisions, "
                  f"{space.resolution} px" + (f", contains {space.reference}" if space.reference else ""))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    if args.validate_cost is not None:
        return run_validate_cost(args)
    cfg = config_from_args(args)
    if not cfg.data:
        from ..errors import UserError

        raise UserError("--data DIR is required (an ImageFolder root with train/<class>/*)")
    from ..nas import search, spec_as_python
    from ..nas.report import format_probabilities

    result = search(cfg)
    if not result.complete:
        print(f"stopped after {len(result.history)} steps; continue with --resume auto --out {cfg.out}")
        return 0
    if not result.files:  # not rank 0
        return 0
    print(spec_as_python(result.spec))
    print(f"\ncost: {result.cost:.4g} {result.cost_unit} = {result.cost / result.target:.3f} x T0 "
          f"(T0 = {result.target:.4g}; {result.cost_name}, {result.resolution} px)")
    print(f"\ncontroller's final probabilities ({result.stages[-1].stage} stage; * = chosen):")
    print(format_probabilities(result.probabilities))
    print("\nwrote " + ", ".join(str(p) for p in result.files.values()))
    print(f"next: mnv4 train --model {result.files['spec']} --data DIR ...")
    return 0


def run_validate_cost(args: argparse.Namespace) -> int:
    """Both cost models -- the roofline at --rp and the latency table -- against the end-to-end ORT latency of
    N random architectures of the space (``mnv4.nas.cost.validate_cost``)."""
    import torch

    from ..nas import get_space
    from ..nas.cost import LatencyTableCost, roofline_cost, validate_cost

    cfg = config_from_args(args, require_target=False)
    space = get_space(cfg.space)
    resolution = cfg.resolution or space.resolution
    generator = torch.Generator().manual_seed(cfg.seed)
    specs = [space.decode(space.random(generator), name=f"random_{i:03d}") for i in range(args.validate_cost)]
    table = LatencyTableCost(cfg.latency_table, threads=cfg.threads, progress=bool(cfg.progress))
    table.measure(specs, resolution)  # all missing parts in one pass: faster than one at a time
    costs = [roofline_cost(cfg.ridge_point_value(), cfg.precision), table]
    print(validate_cost(costs, specs, resolution, progress=bool(cfg.progress)).format())
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m mnv4.nas`` (for ``torchrun ... -m mnv4.nas``): ``mnv4 search ...``."""
    return run_command("search", "mnv4.nas", argv)
