"""Does the search beat random architectures of the same cost? And what does weight sharing cost in speed?

    python benchmarks/nas_proxy.py proxy                 # digits at 32 px, tiny space, 3 cost targets (CPU, ~1 h)
    python benchmarks/nas_proxy.py throughput            # supernet vs stand-alone training step, img/s
    python benchmarks/nas_proxy.py throughput --device cuda --space conv_small --image-size 224 --batch-size 128

proxy: for each of 3 cost targets (quantiles of the roofline cost of random architectures of the tiny space), run
the two-stage search on scikit-learn's digits (written as an ImageFolder, as the tests do), train the found
architecture stand-alone with `mnv4.train`, and train >= 5 random architectures whose cost is within --tolerance of
the found one's with the same recipe and seed. Reports each model's cost and validation top-1, and the found minus
the random median per target. On a proxy this small the accuracy differences between architectures are a few
validation images; the script reports what it measures and draws no conclusion the numbers cannot carry.

throughput: one training step (forward, loss, backward, AdamW) of the supernet running its largest path vs the same
architecture as a stand-alone MobileNetV4, interleaved rounds, median img/s; plus the supernet on random paths (what
a search runs). On CUDA add --precision bf16 to measure under autocast.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------------- proxy
def digits_root(work: Path) -> Path:
    sys.path.insert(0, str(REPO / "tests"))
    from digits import write_digits_imagefolder  # the tests' helper: digits upscaled to 32 px, fixed split

    return write_digits_imagefolder(work / "digits32", size=32)


def train_standalone(spec_path: Path, data: Path, out: Path, epochs: float, seed: int) -> float:
    """Validation top-1 (%) after training ``spec_path`` with the digits recipe of the tests."""
    from mnv4.train import TrainConfig, train

    cfg = TrainConfig(model=str(spec_path), data=str(data), out=str(out), image_size=32, epochs=epochs,
                      global_batch=32, lr=2e-3, warmup_epochs=1, weight_decay=0.05, label_smoothing=0.1,
                      val_crop_pct=1.0, crop_scale_min=0.85, hflip=False, grad_clip=1.0, workers=0, threads=2,
                      progress=False, tensorboard=False, seed=seed)
    return float(train(cfg).final["val_top1"])


def random_matched(space, cost, target_cost: float, tolerance: float, count: int, seed: int) -> list:
    """``count`` random architectures whose cost is within ``tolerance`` of ``target_cost`` (rejection sampling)."""
    generator = torch.Generator().manual_seed(seed)
    found, tries = [], 0
    while len(found) < count:
        tries += 1
        if tries > 200_000:
            raise RuntimeError(f"fewer than {count} random architectures within {tolerance:.0%} of {target_cost:.4g}")
        arch = space.random(generator)
        spec = space.decode(arch)
        if abs(cost(spec, 32) / target_cost - 1) <= tolerance and spec not in found:
            found.append(spec)
    return found


def run_proxy(args) -> dict:
    from dataclasses import replace

    from mnv4.nas import SPACES, SearchConfig, search
    from mnv4.nas.cost import roofline_cost
    from mnv4.specs import save_spec

    work = Path(args.work or tempfile.mkdtemp(prefix="nas_proxy_"))
    data = Path(args.data) if args.data else digits_root(work)
    space, cost = SPACES["tiny"], roofline_cost(args.rp)
    generator = torch.Generator().manual_seed(0)
    costs = sorted(cost(space.decode(space.random(generator)), 32) for _ in range(1000))
    report = {"machine": f"{torch.get_num_threads()} torch threads, CPU", "rp": args.rp, "targets": []}
    t_start = time.time()
    for qi, q in enumerate(args.quantiles):
        target = costs[int(q * (len(costs) - 1))]
        out = work / f"search_q{q:.2f}"
        cfg = SearchConfig(space="tiny", data=str(data), out=str(out), name=f"found_q{int(q * 100)}", target=target,
                           ridge_point=args.rp, steps=args.search_steps, global_batch=32, crop_scale_min=0.85,
                           crop_pct=1.0, hflip=False, holdout_fraction=0.2, rl_batch_multiplier=2,
                           rl_lr=args.rl_lr, beta=args.beta, workers=0, threads=2, progress=False, seed=qi)
        t0 = time.time()
        result = search(cfg)
        search_s = time.time() - t0
        found_top1 = train_standalone(result.files["spec"], data, work / f"train_found_q{q:.2f}",
                                      args.train_epochs, args.train_seed)
        entry = {"quantile": q, "target": target, "found": {"cost": result.cost, "top1": found_top1,
                                                            "arch": space.describe(space.encode(result.spec)),
                                                            "search_s": search_s}, "random": []}
        for i, spec in enumerate(random_matched(space, cost, result.cost, args.tolerance, args.random, 100 + qi)):
            path = save_spec(replace(spec, name=f"random_q{int(q * 100)}_{i}"), work / f"random_q{q:.2f}_{i}.json")
            top1 = train_standalone(path, data, work / f"train_random_q{q:.2f}_{i}", args.train_epochs,
                                    args.train_seed)
            entry["random"].append({"cost": cost(spec, 32), "top1": top1, "arch": space.describe(space.encode(spec))})
        median = statistics.median(r["top1"] for r in entry["random"])
        entry["random_median_top1"], entry["found_minus_random_median"] = median, found_top1 - median
        report["targets"].append(entry)
        print_target(entry)
    report["wall_s"] = time.time() - t_start
    return report


def print_target(entry: dict) -> None:
    target = entry["target"]
    print(f"\ntarget T0 = {target / 1e6:.2f} M effective MACs (quantile {entry['quantile']:.2f} of random costs)")
    print(f"  {'model':8s} {'cost/T0':>8s} {'top-1 %':>8s}  architecture")
    found = entry["found"]
    print(f"  {'found':8s} {found['cost'] / target:>8.3f} {found['top1']:>8.2f}  {found['arch']}")
    for i, r in enumerate(entry["random"]):
        print(f"  {'random' + str(i):8s} {r['cost'] / target:>8.3f} {r['top1']:>8.2f}  {r['arch']}")
    print(f"  found - random median: {entry['found_minus_random_median']:+.2f} points "
          f"(random median {entry['random_median_top1']:.2f}%)")


# ----------------------------------------------------------------------------------------------- throughput
def run_throughput(args) -> dict:
    from mnv4.model import MobileNetV4
    from mnv4.nas import SPACES, SuperNet

    device = torch.device(args.device)
    space = SPACES[args.space]
    largest = space.largest()
    torch.manual_seed(0)
    supernet = SuperNet(space, num_classes=1000).to(device).train()
    standalone = MobileNetV4(space.decode(largest), num_classes=1000).to(device).train()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.precision)
    images = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
    labels = torch.randint(0, 1000, (args.batch_size,), device=device)
    generator = torch.Generator().manual_seed(0)

    def stepper(model, forward):
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def step():
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                loss = F.cross_entropy(forward().float(), labels)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return step

    largest_path = space.path(largest)
    contenders = {
        "stand-alone (largest)": stepper(standalone, lambda: standalone(images)),
        "supernet (largest path)": stepper(supernet, lambda: supernet(images, largest_path)),
        "supernet (random paths)": stepper(supernet, lambda: supernet(images, space.path(space.random(generator)))),
    }

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for step in contenders.values():
        for _ in range(args.warmup):
            step()
    sync()
    # Wall-clock img/s, and on a CPU also img per CPU-second of this process (all its threads): on a shared machine
    # the wall clock mostly measures the neighbours, the CPU time what each contender costs.
    rates = {k: [] for k in contenders}
    cpu_rates = {k: [] for k in contenders}
    for _ in range(args.rounds):  # interleaved: every contender sees the same machine state
        for name, step in contenders.items():
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(args.steps):
                step()
            sync()
            rates[name].append(args.steps * args.batch_size / (time.perf_counter() - t0))
            cpu_rates[name].append(args.steps * args.batch_size / max(time.process_time() - c0, 1e-9))
    ref = statistics.median(rates["stand-alone (largest)"])
    cpu_ref = statistics.median(cpu_rates["stand-alone (largest)"])
    rows = []
    print(f"\n{args.space} at {args.image_size} px, batch {args.batch_size}, {args.precision}, {device} "
          f"({torch.get_num_threads()} threads); median of {args.rounds} interleaved rounds of {args.steps} steps")
    for name, values in rates.items():
        med, cpu_med = statistics.median(values), statistics.median(cpu_rates[name])
        rows.append({"contender": name, "img_per_s": med, "min": min(values), "max": max(values),
                     "ratio_to_standalone": med / ref, "img_per_cpu_s": cpu_med,
                     "cpu_ratio_to_standalone": cpu_med / cpu_ref})
        line = f"  {name:26s} {med:9.1f} img/s (range {min(values):.1f}-{max(values):.1f}) {med / ref:5.2f}x"
        if device.type == "cpu":
            line += f" | {cpu_med:9.1f} img/CPU-s {cpu_med / cpu_ref:5.2f}x"
        print(line)
    return {"device": str(device), "space": args.space, "image_size": args.image_size, "batch_size": args.batch_size,
            "precision": args.precision, "rows": rows}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode", required=True)
    p = sub.add_parser("proxy", help="search vs random architectures of matched cost")
    p.add_argument("--data", default=None, help="ImageFolder root (default: the digits, written to --work)")
    p.add_argument("--work", default=None, help="working folder (default: a new temporary one)")
    p.add_argument("--quantiles", type=lambda s: [float(x) for x in s.split(",")], default=[0.25, 0.5, 0.75])
    p.add_argument("--rp", default="pixel6-cpu", help="ridge point of the roofline cost")
    p.add_argument("--search-steps", type=int, default=120, help="steps per search stage")
    p.add_argument("--beta", type=float, default=-0.5)
    p.add_argument("--rl-lr", type=float, default=0.05)
    p.add_argument("--train-epochs", type=float, default=5)
    p.add_argument("--train-seed", type=int, default=0)
    p.add_argument("--random", type=int, default=5, help="random architectures per target (>= 5)")
    p.add_argument("--tolerance", type=float, default=0.05, help="cost match of the random architectures")
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    t = sub.add_parser("throughput", help="supernet vs stand-alone training step")
    t.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    t.add_argument("--space", default="tiny")
    t.add_argument("--image-size", type=int, default=32)
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32")
    t.add_argument("--threads", type=int, default=None)
    t.add_argument("--warmup", type=int, default=3)
    t.add_argument("--steps", type=int, default=5)
    t.add_argument("--rounds", type=int, default=5)
    t.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    if args.mode == "proxy":
        if args.random < 5:
            parser.error("--random must be >= 5")
        report = run_proxy(args)
    else:
        report = run_throughput(args)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
