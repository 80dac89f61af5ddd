"""The cost of the NaN/inf guard (``mnv4.engine.guard``) per training step: the same optimiser step with and without
it, interleaved in one run, reported as a ratio with its spread, plus the guard's own work timed alone.

    python benchmarks/train_guard.py                    # CPU: Conv-S, batch 32 at 64 px
    python benchmarks/train_guard.py --device cuda --batch-size 256 --image-size 224

Modes: ``eager`` (what CPU training uses: the input, loss and gradient norm are checked on the host as they appear)
and ``device`` (what CUDA training uses: nothing is read on the host; BN statistics restored with ``torch.where`` and
the fused AdamW skipped through ``found_inf``). On a CPU both modes are measured; the device mode on a CPU shows its
kernel count, not a GPU number.
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


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_step(model, device: torch.device, guard_mode: str | None, out: Path):
    """One optimiser step as training runs it (clip 1.0, fused AdamW where the device-side guard needs it)."""
    from mnv4.engine.guard import NonFiniteGuard
    from mnv4.engine.optim import Optimization

    fused = device.type == "cuda" or guard_mode == "device"
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=fused)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    optim = Optimization(optimizer, scheduler, torch.amp.GradScaler(device.type, enabled=False), [], grad_clip=1.0)
    guard = None
    if guard_mode is not None:
        guard = NonFiniteGuard(model, device, out, distributed=False, eager=guard_mode == "eager")

    class NoGuard:
        def observe(self, kind, value):
            pass

        def before_update(self, optimizer, scaler):
            pass

    step_guard = guard or NoGuard()

    def step(images: torch.Tensor, labels: torch.Tensor) -> None:
        if guard is not None:
            guard.begin_step(0, 0)
        step_guard.observe("input", images)
        loss = F.cross_entropy(model(images), labels)
        step_guard.observe("loss", loss)
        loss.backward()
        optim.step(model, step_guard)

    return step, guard


def main() -> int:
    import mnv4

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--model", default="mobilenetv4_conv_small")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    images = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
    labels = torch.randint(0, 1000, (args.batch_size,), device=device)
    out = Path(tempfile.mkdtemp())
    steps = {}
    modes = ["eager", "device"] if device.type == "cpu" else ["device"]
    for mode in [None, *modes]:
        torch.manual_seed(0)
        model = mnv4.create_model(args.model).to(device).train()
        steps[mode] = make_step(model, device, mode, out)
    for step, _ in steps.values():  # warm-up
        step(images, labels)
    times: dict[str | None, list[float]] = {k: [] for k in steps}
    for _ in range(args.rounds):  # interleaved: every variant sees the same machine state
        for mode, (step, _) in steps.items():
            sync(device)
            start = time.perf_counter()
            for _ in range(args.steps):
                step(images, labels)
            sync(device)
            times[mode].append((time.perf_counter() - start) / args.steps)

    # the guard's own work, alone: snapshot + two observes + the device-side restore and found_inf
    guard_alone = {}
    loss = torch.zeros((), device=device)
    for mode in modes:
        guard = steps[mode][1]
        optimizer = torch.optim.AdamW([torch.zeros(1, device=device)], fused=True)
        scaler = torch.amp.GradScaler(device.type, enabled=False)
        sync(device)
        start = time.perf_counter()
        for _ in range(20):
            guard.begin_step(0, 0)
            guard.observe("input", images)
            guard.observe("loss", loss)
            guard.before_update(optimizer, scaler)
        sync(device)
        guard_alone[mode] = (time.perf_counter() - start) / 20

    base = times[None]
    rows = []
    for mode in modes:
        ratios = [g / b for g, b in zip(times[mode], base, strict=True)]
        rows.append(
            {
                "mode": mode,
                "device": str(device),
                "model": args.model,
                "batch": args.batch_size,
                "image_size": args.image_size,
                "step_ms_without": 1000 * statistics.median(base),
                "step_ms_with": 1000 * statistics.median(times[mode]),
                "ratio_median": statistics.median(ratios),
                "ratio_min": min(ratios),
                "ratio_max": max(ratios),
                "guard_alone_ms": 1000 * guard_alone[mode],
            }
        )
    for row in rows:
        spread = f"rounds {row['ratio_min']:.3f}..{row['ratio_max']:.3f}"
        print(
            f"{row['mode']:>6} guard on {row['device']}: step {row['step_ms_with']:.1f} ms vs "
            f"{row['step_ms_without']:.1f} ms without = x{row['ratio_median']:.3f} ({spread}); "
            f"the guard's own work {row['guard_alone_ms']:.3f} ms per step"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
