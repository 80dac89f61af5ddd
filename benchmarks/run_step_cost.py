"""What one optimiser step of each run costs end to end through its public API — classification (``mnv4.train``),
detection (``mnv4.detection.train_detector``) and the search (``mnv4.nas.search``) — in CPU seconds and wall seconds
per step, on small CPU-sized runs (digits at 32 px; glyphs at 64 px; the tiny search space).

Everything a step does is in the number: data loading, the forward and backward, the optimiser, the NaN guard, the
EMA, logs and checkpoints (the search: the controller step and the held-out quality batch). So it compares run
machinery, e.g. before and after a refactor, with the same model and data:

    python benchmarks/run_step_cost.py --json new.json                                   # this checkout
    PYTHONPATH=/path/to/old/src python benchmarks/run_step_cost.py --json old.json       # another one
    python benchmarks/run_step_cost.py --compare old.json new.json                       # ratios

``--rounds`` repeats every run (interleave checkouts round by round on a shared machine: run the two commands
alternately). CPU seconds are the comparable measure where other jobs share the cores; the script reports both.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def timed(fn) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def classification(work: Path, steps: int, round_: int):
    from digits import write_digits_imagefolder

    from mnv4.train import TrainConfig, train

    data = write_digits_imagefolder(work / "digits32", size=32)
    cfg = TrainConfig(model="mobilenetv4_conv_small", data=str(data), out=str(work / f"train{round_}"),
                      image_size=32, epochs=1, global_batch=32, max_steps=steps, lr=2e-3, warmup_epochs=0.1,
                      val_crop_pct=1.0, ema_decay=0.99, workers=0, threads=1, progress=False, tensorboard=False,
                      log_every=10, save_every_steps=steps // 2)
    return lambda: train(cfg)


def detection(work: Path, steps: int, round_: int):
    from coco_digits import write_coco_digits

    from mnv4.detection import load_detect_config, train_detector

    annotations, images = write_coco_digits(work / "coco", 64, "train", digits=(0, 1, 7), size_range=(96, 128),
                                            glyph_range=(24, 40))
    cfg = load_detect_config(arch="retinanet", backbone="mobilenetv4_conv_small", train_annotations=str(annotations),
                             train_images=str(images), out=str(work / f"detect{round_}"), image_size=64,
                             fpn_channels=16, epochs=10, global_batch=4, max_steps=steps, lr=2e-3, ema_decay=0.99,
                             workers=0, threads=1, progress=False, tensorboard=False, log_every=10, eval_every=0,
                             save_every_steps=steps // 2)
    return lambda: train_detector(cfg)


def search(work: Path, steps: int, round_: int):
    from digits import write_digits_imagefolder

    from mnv4.nas import SearchConfig
    from mnv4.nas import search as run_search

    data = write_digits_imagefolder(work / "digits32", size=32)
    cfg = SearchConfig(space="tiny", data=str(data), out=str(work / f"search{round_}"), target=2.5e7,
                       steps=steps // 2, global_batch=32, crop_scale_min=0.85, crop_pct=1.0, hflip=False,
                       holdout_fraction=0.2, rl_batch_multiplier=2, rl_lr=0.05, beta=-0.5, workers=0, threads=1,
                       progress=False, plot=False, save_every_steps=steps // 4)
    return lambda: run_search(cfg)


RUNS = {"train": classification, "detect": detection, "search": search}


def measure(args) -> dict:
    import torch

    sys.path.insert(0, str(REPO / "tests"))  # the test data writers
    import mnv4

    torch.set_num_threads(1)
    rows = {name: {"wall_s": [], "cpu_s": []} for name in args.runs}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for r in range(args.rounds):
            for name in args.runs:
                run = RUNS[name](work, args.steps, r)
                wall, cpu = timed(run)
                rows[name]["wall_s"].append(wall / args.steps)
                rows[name]["cpu_s"].append(cpu / args.steps)
                print(f"round {r}: {name:7s} {1e3 * wall / args.steps:8.1f} ms wall, "
                      f"{1e3 * cpu / args.steps:8.1f} ms CPU per step", flush=True)
    return {"mnv4": str(Path(mnv4.__file__).parent), "steps": args.steps, "rounds": args.rounds,
            "per_step": {k: {m: statistics.median(v) for m, v in d.items()} for k, d in rows.items()}, "raw": rows}


def compare(old_path: Path, new_path: Path) -> None:
    old, new = json.loads(old_path.read_text()), json.loads(new_path.read_text())
    print(f"{'run':8s} {'old ms CPU':>10s} {'new ms CPU':>10s} {'new/old':>8s} {'old ms wall':>11s} "
          f"{'new ms wall':>11s} {'new/old':>8s}")
    for name in new["per_step"]:
        o, n = old["per_step"][name], new["per_step"][name]
        print(f"{name:8s} {1e3 * o['cpu_s']:10.1f} {1e3 * n['cpu_s']:10.1f} {n['cpu_s'] / o['cpu_s']:8.3f} "
              f"{1e3 * o['wall_s']:11.1f} {1e3 * n['wall_s']:11.1f} {n['wall_s'] / o['wall_s']:8.3f}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", nargs="+", choices=list(RUNS), default=list(RUNS))
    p.add_argument("--steps", type=int, default=40, help="optimiser steps per run (the search: half per stage)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--compare", nargs=2, type=Path, metavar=("OLD_JSON", "NEW_JSON"), default=None)
    args = p.parse_args()
    if args.compare:
        compare(*args.compare)
        return 0
    result = measure(args)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
