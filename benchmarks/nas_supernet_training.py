"""Why a search can fail before its controller learns anything: how fast the shared weights of a supernet learn under
each way of choosing the path a step trains, next to one path trained alone.

    python benchmarks/nas_supernet_training.py                       # every scheme, 300 steps each (~5 CPU-minutes)
    python benchmarks/nas_supernet_training.py --schemes fixed uniform --steps 600

The data: the first 300 training images of each class of the NAS proxy's shapes set (`mnv4.synthetic_shapes`, 48
px, 12 classes; written to --data if missing) held in memory, normalised per channel, no augmentation (the point is
the optimisation, not generalisation); the next 100 per class are held out. The tiny space's `SuperNet`, AdamW (lr
4e-3, weight decay 0.05, 8% linear warm-up then cosine), batch 64, gradient clip 1, label smoothing 0.1, one torch
thread, seed 0 — the recipe of the proxy's stand-alone trainings (benchmarks/nas_proxy.py).

Schemes (what path each step trains):
- fixed: one random architecture every step (= training that architecture alone);
- largest: the largest path every step;
- two_paths: the fixed architecture and the largest, alternately;
- one_dw_slot: the fixed architecture with its first start DW slot off and 3x3 in turn;
- depth_only / width_only / blocks_only / dw_only / expand_only: the fixed architecture with only its depths / only
  its widths / only its block decisions (DW slots and expansions) / only its DW slots / only its expansions drawn at
  random each step;
- uniform: a uniformly random architecture every step (the ranking diagnostic's supernet, and the search's before
  its controller has learned);
- tunas_warmup: uniform, but the largest path with a probability falling from 1 to 0 over the first 25% of steps
  (TuNAS's filter warm-up, as `mnv4 search` does; its DW "all ops on" part is left out);
- sandwich: the largest path and a uniformly random one every step, gradients summed (BigNAS's rule, less its
  smallest path and in-place distillation).

--shared-kernels tries one change of the supernet (not in the library): a DW slot's 3x3 is the centre of its 5x5
(one kernel and one BN per slot, as Once-for-All shares kernels) instead of a separate 3x3 and 5x5 with their own BN,
so every step that runs a DW in a slot trains the same weights.

Reported per scheme: the training loss (mean of each 50 steps) of the paths it trains, and at the end the held-out
top-1 of 8 random architectures (each with its own batch statistics, as the search scores a path) and of the fixed
one. Chance is 8.3% (12 classes); the training loss at chance is ~2.49.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
SCHEMES = ("fixed", "largest", "two_paths", "one_dw_slot", "depth_only", "width_only", "blocks_only", "dw_only",
           "expand_only", "uniform", "tunas_warmup", "sandwich")


def load_shapes(root: Path, per_class: int, skip: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    from PIL import Image

    classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
    images, labels = [], []
    for c, name in enumerate(classes):
        for f in sorted((root / "train" / name).iterdir())[skip : skip + per_class]:
            images.append(np.asarray(Image.open(f).convert("RGB"), dtype=np.float32) / 255.0)
            labels.append(c)
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)
    x = (x - x.mean((0, 2, 3), keepdim=True)) / x.std((0, 2, 3), keepdim=True)
    return x, torch.tensor(labels)


def share_dw_kernels() -> None:
    """Patch ``SuperUIB._dw_slot`` so that every kernel size of a slot runs the largest kernel's centre and BN."""
    from mnv4.nas import supernet as sn

    def dw_slot(slot, x, kernels):
        outs = []
        for k in kernels:
            if k == 0:
                outs.append(x)
                continue
            big = slot[str(max(int(key) for key in slot.keys()))]
            trim = (big.conv.kernel_size[0] - k) // 2
            weight = big.conv.weight[: x.shape[1], :, trim : trim + k, trim : trim + k]
            y = F.conv2d(x, weight, None, big.conv.stride, k // 2, 1, x.shape[1])
            outs.append(sn._sliced_bn(big.bn, y))
        return outs[0] if len(outs) == 1 else torch.stack(outs).mean(0)

    sn.SuperUIB._dw_slot = staticmethod(dw_slot)


def run_scheme(scheme: str, x, y, held_x, held_y, steps: int, lr: float, seed: int = 0) -> dict:
    from mnv4.nas import SuperNet, get_space
    from mnv4.nas.space import COARSE_KINDS, EXPAND, MID_DW, START_DW

    space = get_space("tiny")
    torch.manual_seed(seed)
    net = SuperNet(space, int(y.max()) + 1).train()
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.05)
    largest, fixed = space.largest(), space.random(torch.Generator().manual_seed(123))
    generator = torch.Generator().manual_seed(seed)

    def keep_fixed_except(arch, drawn) -> tuple:
        values = {d.key: space.choice(fixed, d.key) for d in space.decisions if not drawn(d)}
        return space.with_values(arch, values)

    def path_of(step: int):
        arch = space.random(generator)
        if scheme == "fixed":
            return fixed
        if scheme == "largest":
            return largest
        if scheme == "two_paths":
            return largest if step % 2 else fixed
        if scheme == "one_dw_slot":  # the fixed architecture, its first start DW slot none / 3x3 in turn
            first = next(d.key for d in space.decisions if d.kind == START_DW)
            return space.with_values(fixed, {first: 3 if step % 2 else 0})
        if scheme == "depth_only":
            return keep_fixed_except(arch, lambda d: d.kind == "depth")
        if scheme == "width_only":
            return keep_fixed_except(arch, lambda d: d.kind == "width")
        if scheme == "blocks_only":
            return keep_fixed_except(arch, lambda d: d.kind not in COARSE_KINDS)
        if scheme == "dw_only":
            return keep_fixed_except(arch, lambda d: d.kind in (START_DW, MID_DW))
        if scheme == "expand_only":
            return keep_fixed_except(arch, lambda d: d.kind == EXPAND)
        if scheme == "tunas_warmup" and torch.rand((), generator=generator) < 1 - step / (0.25 * steps):
            return largest
        return arch  # uniform, tunas_warmup after its warm-up, sandwich's random path

    losses, cpu = [], time.process_time()
    warmup = max(1, round(0.08 * steps))
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / steps))
        arch = path_of(step)
        rows = torch.randint(0, len(x), (64,), generator=generator)
        opt.zero_grad()
        if scheme == "sandwich":
            F.cross_entropy(net(x[rows], space.path(largest)), y[rows], label_smoothing=0.1).backward()
        loss = F.cross_entropy(net(x[rows], space.path(arch)), y[rows], label_smoothing=0.1)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())

    def top1(arch) -> float:
        with torch.no_grad():  # train mode: the held-out batch's own BN statistics, as the search scores a path
            return 100.0 * float((net(held_x, space.path(arch)).argmax(1) == held_y).float().mean())

    eval_generator = torch.Generator().manual_seed(99)
    random_top1 = [top1(space.random(eval_generator)) for _ in range(8)]
    curve = [float(np.mean(losses[i : i + 50])) for i in range(0, steps, 50)]
    return {"scheme": scheme, "steps": steps, "loss_per_50_steps": curve, "random_paths_top1": random_top1,
            "random_paths_top1_mean": float(np.mean(random_top1)), "fixed_path_top1": top1(fixed),
            "largest_path_top1": top1(largest), "cpu_s": time.process_time() - cpu}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--schemes", nargs="+", choices=SCHEMES, default=list(SCHEMES))
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--lr", type=float, default=4e-3)
    p.add_argument("--data", type=Path, default=REPO / "runs" / "nas_proxy" / "shapes48_20000",
                   help="the proxy's shapes set (written here if missing: 20,000 / 5,000 images at 48 px)")
    p.add_argument("--shared-kernels", action="store_true", help="a DW slot's kernels share weights (see above)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    torch.set_num_threads(1)
    if args.shared_kernels:
        share_dw_kernels()
    if not (args.data / "train").is_dir():
        from mnv4.synthetic import synthetic_shapes

        synthetic_shapes(args.data, train=20_000, val=5_000, size=48, seed=0)
    x, y = load_shapes(args.data, 300)
    held_x, held_y = load_shapes(args.data, 100, skip=300)
    print(f"{len(x)} training / {len(held_x)} held-out images in memory; {args.steps} steps per scheme, batch 64")
    print(f"{'scheme':13s} {'loss per 50 steps':48s} {'random paths top-1':>18s} {'fixed':>6s} {'largest':>7s} "
          f"{'CPU s':>5s}")
    rows = []
    for scheme in args.schemes:
        r = run_scheme(scheme, x, y, held_x, held_y, args.steps, args.lr)
        rows.append(r)
        curve = " ".join(f"{v:.2f}" for v in r["loss_per_50_steps"])
        print(f"{scheme:13s} {curve:48s} {r['random_paths_top1_mean']:18.1f} {r['fixed_path_top1']:6.1f} "
              f"{r['largest_path_top1']:7.1f} {r['cpu_s']:5.0f}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
