"""Training throughput in one run: (a) input pipelines alone, (b) training steps on synthetic batches, ours vs
timm, (c) end to end, real JPEGs through a pipeline into our training step, as a fraction of (b).

    python benchmarks/train_throughput.py --json tt.json          # on a GPU: the whole measurement, <= ~9 min
    python benchmarks/train_throughput.py                         # CPU: small settings; says what is not measured

(a) img/s from JPEG files (generated here: ImageNet-like 500x375 / 375x500, ~90 KB) to normalised batches on the
    device: the CPU loader (PIL + torchvision v2 in DataLoader workers, all cores), the torchvision-nvJPEG path
    (``--data-pipeline gpu``: batched ``decode_jpeg`` on the GPU + GpuAugment's per-image crop loop), and DALI
    (``mnv4.train.dali``). Steady state: the first batches of each epoch (worker start-up) are not timed; epochs of
    the pipelines are interleaved, median over rounds.
(b) forward + label-smoothed CE + backward + fused AdamW step at bf16 autocast with channels_last inputs, for
    ours (torch.compile) vs timm eager vs timm compiled, interleaved rounds; peak GPU memory of each (its steps'
    peak above what was allocated before them, plus its own parameters and optimiser state and the input batch).
(c) each pipeline feeding ours (compiled) Conv-M; the rate as a fraction of (b)'s synthetic rate.

Goals (issue 14): DALI >= 20,000 img/s at 224 on an H100/H200; ours >= 1.5x timm eager and >= 1.0x timm compiled
(Conv-S, Conv-M, Hybrid-M); end to end >= 90% of synthetic for Conv-M; peak memory next to timm's.

Timeout-safe: results go to ``--json`` after every row; no new unit starts once ``--budget-s`` is spent (the rest is
reported as not measured), SIGTERM prints the summary of what was measured. Units run in priority order: pipelines,
Conv-M (b), end to end, then Conv-S and Hybrid-M (b). Set PYTHONUNBUFFERED=1 to see rows as they come.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

MODELS = ["mobilenetv4_conv_medium", "mobilenetv4_conv_small", "mobilenetv4_hybrid_medium"]  # Conv-M first
E2E_MODEL = "mobilenetv4_conv_medium"
DALI_GOAL, EAGER_GOAL, COMPILED_GOAL, E2E_GOAL = 20_000, 1.5, 1.0, 0.9
NOT_MEASURED_ON_CPU = "no GPU: a CPU run says nothing about the GPU goals"


class Stop(Exception):
    """SIGTERM (a timeout): stop measuring, print what was measured."""


def _stop(*_) -> None:
    raise Stop()


class Recorder:
    """The results so far, rewritten to ``path`` after every row (a killed run keeps them), and the time budget."""

    def __init__(self, path: Path | None, budget_s: float, header: dict):
        self.path, self.deadline = path, time.monotonic() + budget_s
        self.results = {**header, "pipeline": [], "train_step": [], "end_to_end": [], "not_measured": []}
        self.save()

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def add(self, section: str, row: dict) -> dict:
        self.results[section].append(row)
        print(json.dumps(row), file=sys.stderr)
        self.save()
        return row

    def skip(self, what: str, reason: str) -> None:
        self.add("not_measured", {"what": what, "reason": reason})

    def save(self) -> None:
        if self.path is None:
            return
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.results, indent=2))
        os.replace(tmp, self.path)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------------------------- JPEG set
def _write_jpeg(job: tuple[Path, int]) -> int:
    """One photo-like JPEG: smooth colour fields plus grain, so that its size (~90 KB at 500x375, quality 90)
    and Huffman decoding cost are ImageNet-like, not those of a flat synthetic image."""
    from PIL import Image

    path, seed = job
    rng = np.random.default_rng(seed)
    width, height = [(500, 375), (500, 375), (500, 375), (375, 500), (500, 333)][seed % 5]
    base = Image.fromarray((rng.random((12, 16, 3)) * 255).astype(np.uint8)).resize((width, height), Image.BICUBIC)
    grain = rng.normal(0, 16, (height, width, 3)).astype(np.float32)
    Image.fromarray((np.asarray(base) + grain).clip(0, 255).astype(np.uint8)).save(path, quality=90)
    return path.stat().st_size


def write_jpegs(folder: Path, count: int, distinct: int, threads: int) -> float:
    """``count`` files in ``folder/c0``: ``distinct`` generated JPEGs, repeated as hard links (an epoch long
    enough to time without generating every file). Returns the mean file size in KB."""
    (folder / "c0").mkdir(parents=True, exist_ok=True)
    distinct = min(distinct, count)
    jobs = [(folder / "c0" / f"{i:06d}.jpg", i) for i in range(distinct)]
    with ThreadPoolExecutor(threads) as pool:  # PIL encodes without the GIL; forking after torch can deadlock
        sizes = list(pool.map(_write_jpeg, jobs))
    for i in range(distinct, count):
        os.link(jobs[i % distinct][0], folder / "c0" / f"{i:06d}.jpg")
    return sum(sizes) / len(sizes) / 1024


# ----------------------------------------------------------------------------------------------- (a) pipelines
def pipelines(args, device: torch.device, folder: Path, size: int, rec: Recorder) -> dict[str, Callable]:
    """name -> ``epoch(sampler)`` giving ``(images on device, labels, ...)``; the DALI one only with DALI."""
    from mnv4.train import TrainConfig
    from mnv4.train.data import EncodedImageDataset, GpuAugment, ImageFolderDataset, collate, train_transform
    from mnv4.train.inputs import resolve_model_defaults

    # Inception crop + flip, no RandAugment (the pipeline's fixed cost); Conv-S's mean/std, as a run resolves them
    cfg = resolve_model_defaults(TrainConfig(seed=0, image_size=size), "mobilenetv4_conv_small")
    on_gpu = device.type == "cuda"

    def torch_loader(dataset, sampler, workers):
        return torch.utils.data.DataLoader(
            dataset, batch_sampler=sampler, num_workers=workers, collate_fn=collate, pin_memory=on_gpu
        )

    cpu_dataset = ImageFolderDataset(folder, train_transform(size, cfg), seed=0)

    def cpu_epoch(sampler) -> Iterator:
        for images, labels, *rest in torch_loader(cpu_dataset, sampler, args.cpu_workers):
            yield images.to(device, non_blocking=True), labels, *rest

    encoded_dataset = EncodedImageDataset(folder, seed=0)
    augment = GpuAugment(size, cfg, device)

    def nvjpeg_epoch(sampler) -> Iterator:
        for samples, labels, *rest in torch_loader(encoded_dataset, sampler, args.dali_workers):
            yield *augment(samples, labels), *rest

    found = {
        f"cpu loader ({args.cpu_workers} workers)": cpu_epoch,
        "torchvision decode_jpeg + GpuAugment" + ("" if on_gpu else " (on the CPU)"): nvjpeg_epoch,
    }
    try:
        from mnv4.train.dali import DaliTrainLoader

        dali = DaliTrainLoader(
            folder,
            size,
            cfg,
            device,
            args.batch_size,
            workers=args.dali_workers,
            threads=args.dali_threads,
            channels_last=True,
            hw_decoder_load=args.hw_decoder_load,
        )
        found["DALI" + (" (mixed: nvJPEG / HW decoder)" if on_gpu else " (CPU operators)")] = dali.epoch
    except ValueError as err:  # UserError: DALI is not installed
        rec.skip(f"DALI at {size} px", str(err))
    return found


def timed_epoch(epoch: Iterator, device: torch.device, skip: int, limit: int | None = None, consume=None):
    """(img/s, images timed) over an epoch's batches after its first ``skip`` (worker start-up), at most ``limit``
    of them; ``consume(images, labels)`` runs on every batch (end to end)."""
    start, timed = (time.perf_counter() if skip == 0 else None), 0
    for b, (images, labels, *_) in enumerate(epoch):
        if consume is not None:
            consume(images, labels)
        if b >= skip:
            timed += len(labels)
        elif b == skip - 1:
            sync(device)
            start = time.perf_counter()
        if limit is not None and b + 1 >= skip + limit:
            break
    sync(device)
    if not timed:
        raise ValueError(f"an epoch has no more than {skip} batches: generate more --images or lower --skip-batches")
    return timed / (time.perf_counter() - start), timed


def bench_pipelines(args, device: torch.device, folder: Path, num_files: int, rec: Recorder) -> dict[str, Callable]:
    from mnv4.engine.seeds import MicroBatchSampler

    found = pipelines(args, device, folder, args.pipeline_size, rec)
    rates: dict[str, list[float]] = {name: [] for name in found}
    for round_ in range(args.pipeline_rounds + 1):  # round 0 warms up (workers, nvJPEG handles, DALI graph)
        for name, epoch in found.items():
            if rec.left() < args.pipeline_reserve_s:
                rec.skip(f"pipeline {name}, round {round_}", "time budget")
                continue
            sampler = MicroBatchSampler(num_files, args.batch_size, 1, 0, 1, seed=0, epoch=round_)
            rate, _ = timed_epoch(epoch(sampler), device, args.skip_batches)
            if round_:
                rates[name].append(rate)
    for name, measured in rates.items():
        if measured:
            rec.add(
                "pipeline",
                {
                    "pipeline": name,
                    "img_s": statistics.median(measured),
                    "spread": [min(measured), max(measured)],
                    "rounds": len(measured),
                    "size": args.pipeline_size,
                    "batch": args.batch_size,
                },
            )
    return found


# ----------------------------------------------------------------------------------------------- (b) steps
class TrainStep:
    """One optimiser step (forward, label-smoothed CE, backward, fused AdamW) under the benchmark's settings."""

    def __init__(self, model: torch.nn.Module, device: torch.device, args, compile_model: bool):
        self.model = model.to(device).train()
        if args.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4, fused=device.type == "cuda")
        self.forward = torch.compile(self.model) if compile_model else self.model
        self.device_type = device.type
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.precision)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        with torch.autocast(self.device_type, dtype=self.dtype, enabled=self.dtype is not None):
            loss = F.cross_entropy(self.forward(images).float(), labels, label_smoothing=0.1)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def resident_bytes(self) -> int:
        """Parameters and optimiser state: what stays allocated between steps."""
        state = (t for s in self.optimizer.state.values() for t in s.values() if torch.is_tensor(t))
        return _tensor_bytes(self.model.parameters()) + _tensor_bytes(state)


def _tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def synthetic_batch(args, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
    if args.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, torch.randint(0, 1000, (args.batch_size,), device=device)


def timed_steps(step, batch, device: torch.device, steps: int) -> tuple[float, float | None]:
    """img/s over ``steps`` steps, and the peak memory (MiB) as the module docstring defines it."""
    images, labels = batch
    peak_before = None
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        peak_before = torch.cuda.memory_allocated(device)
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step(images, labels)
    sync(device)
    rate = steps * len(labels) / (time.perf_counter() - start)
    if peak_before is None:
        return rate, None
    above = torch.cuda.max_memory_allocated(device) - peak_before
    return rate, (above + step.resident_bytes() + _tensor_bytes(batch)) / 2**20


def contenders(args, device: torch.device, name: str, rec: Recorder) -> dict:
    import mnv4

    try:
        import timm
    except ImportError:
        timm = None
        rec.skip(f"timm rows for {name}", "timm is not installed (pip install timm)")
    on_gpu = device.type == "cuda"
    ours_compiled = args.compile if args.compile is not None else on_gpu
    found = {
        "ours" + (" compiled" if ours_compiled else " eager"): lambda: TrainStep(
            mnv4.create_model(name), device, args, ours_compiled
        )
    }
    if timm is not None:
        found["timm eager"] = lambda: TrainStep(timm.create_model(name), device, args, False)
        if on_gpu or args.compile:
            found["timm compiled"] = lambda: TrainStep(timm.create_model(name), device, args, True)
        else:
            rec.skip(f"timm compiled, {name}", NOT_MEASURED_ON_CPU + "; --compile measures it here")
    return found


def bench_model(args, device: torch.device, name: str, rec: Recorder):
    """(b) for one model; returns our step (kept for end to end)."""
    batch = synthetic_batch(args, device)
    steps, compile_s = {}, {}
    for key, build in contenders(args, device, name, rec).items():
        if rec.left() < args.unit_reserve_s:
            rec.skip(f"{key}, {name}", "time budget")
            continue
        start = time.perf_counter()
        steps[key] = build()
        for _ in range(args.warmup):  # compiles here
            steps[key](*batch)
        sync(device)
        compile_s[key] = time.perf_counter() - start
    rates: dict[str, list[float]] = {k: [] for k in steps}
    peaks: dict[str, float | None] = {}
    for _ in range(args.rounds):  # interleaved: every contender sees the same machine state
        for key, step in steps.items():
            rate, peaks[key] = timed_steps(step, batch, device, args.steps)
            rates[key].append(rate)
    row = {"model": name, "batch": args.batch_size, "size": args.image_size, "precision": args.precision}
    for key, measured in rates.items():
        row[key] = {
            "img_s": statistics.median(measured),
            "spread": [min(measured), max(measured)],
            "peak_mib": peaks[key],
            "warmup_s": compile_s[key],
        }
    ours = next((k for k in rates if k.startswith("ours")), None)
    for ref in ("timm eager", "timm compiled"):
        if ours and ref in rates:
            row[f"ours / {ref}"] = row[ours]["img_s"] / row[ref]["img_s"]
    rec.add("train_step", row)
    return steps.get(ours), row.get(ours, {}).get("img_s")


# ----------------------------------------------------------------------------------------------- (c) end to end
def bench_end_to_end(args, device, found: dict, num_files: int, step, synthetic: float, rec: Recorder) -> None:
    from mnv4.engine.seeds import MicroBatchSampler

    def consume(images, labels):
        if args.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        step(images, labels.to(device, non_blocking=True))

    for name, epoch in found.items():
        if rec.left() < args.pipeline_reserve_s:
            rec.skip(f"end to end {name}", "time budget")
            continue
        sampler = MicroBatchSampler(num_files, args.batch_size, 1, 0, 1, seed=0, epoch=100)
        rate, timed = timed_epoch(epoch(sampler), device, args.skip_batches, args.e2e_batches, consume)
        row = {"pipeline": name, "model": E2E_MODEL, "img_s": rate, "synthetic_img_s": synthetic, "images": timed}
        row["fraction_of_synthetic"] = rate / synthetic
        rec.add("end_to_end", row)


# ----------------------------------------------------------------------------------------------- summary
def summary(results: dict, on_gpu: bool, args) -> None:
    print(f"\ndevice: {results['device']}; torch {results['torch']}; {results.get('cpus')} CPU cores")
    if results.get("jpegs"):
        j = results["jpegs"]
        print(f"JPEG set: {j['files']} files ({j['distinct']} distinct), mean {j['mean_kb']:.0f} KB")
    if results["pipeline"]:
        print(f"\n(a) input pipeline alone, batch {args.batch_size} at {args.pipeline_size} px (median img/s [range])")
    for r in results["pipeline"]:
        print(f"  {rate(r['img_s']):>10s}  [{rate(r['spread'][0])}, {rate(r['spread'][1])}]  {r['pipeline']}")
    if results["train_step"]:
        print(f"\n(b) training step, batch {args.batch_size} at {args.image_size} px, {args.precision}, "
              f"channels_last={args.channels_last}, fused AdamW (median img/s; peak MiB)")  # fmt: skip
    for r in results["train_step"]:
        cells = [f"{k}: {rate(v['img_s'])}" + (f" ({v['peak_mib']:.0f} MiB)" if v["peak_mib"] else "")
                 for k, v in r.items() if isinstance(v, dict)]  # fmt: skip
        ratios = [f"{k} = {v:.2f}" for k, v in r.items() if k.startswith("ours /")]
        print(f"  {r['model']:27s} " + "; ".join(cells) + ("  |  " + ", ".join(ratios) if ratios else ""))
    if results["end_to_end"]:
        print(f"\n(c) end to end into ours {E2E_MODEL} at {args.image_size} px")
    for r in results["end_to_end"]:
        share = 100 * r["fraction_of_synthetic"]
        print(f"  {rate(r['img_s']):>10s} img/s = {share:5.1f}% of synthetic  {r['pipeline']}")
    print("\ngoals:")
    for line in goal_lines(results, on_gpu):
        print("  " + line)
    for r in results["not_measured"]:
        print(f"  not measured: {r['what']} ({r['reason']})")


def rate(img_s: float) -> str:
    return f"{img_s:.0f}" if img_s >= 100 else f"{img_s:.3g}"


def verdict(value: float, goal: float) -> str:
    return f"goal >= {goal:g}: " + ("met" if value >= goal else "NOT met")


def goal_lines(results: dict, on_gpu: bool) -> list[str]:
    if not on_gpu:
        return [f"every goal: not measured ({NOT_MEASURED_ON_CPU}); the figures above are CPU figures"]
    hopper = any(k in results["device"] for k in ("H100", "H200", "H800", "GH200"))
    lines = []
    dali = [r for r in results["pipeline"] if r["pipeline"].startswith("DALI")]
    if dali:
        met = verdict(dali[0]["img_s"], DALI_GOAL) if hopper else "the goal is for H100/H200-class GPUs"
        lines.append(f"DALI at {dali[0]['img_s']:.0f} img/s ({met})")
    else:
        lines.append("DALI >= 20,000 img/s: not measured (DALI not installed or out of time)")
    for r in results["train_step"]:
        for ref, goal in (("timm eager", EAGER_GOAL), ("timm compiled", COMPILED_GOAL)):
            ratio = r.get(f"ours / {ref}")
            if ratio is not None:
                lines.append(f"{r['model']}: ours / {ref} = {ratio:.2f} ({verdict(ratio, goal)})")
    for r in results["end_to_end"]:
        if r["pipeline"].startswith("DALI"):
            f = r["fraction_of_synthetic"]
            lines.append(f"end to end (DALI) {100 * f:.1f}% of synthetic ({verdict(f, E2E_GOAL)})")
    return lines


# ----------------------------------------------------------------------------------------------- main
def parse_args(argv):
    cuda = torch.cuda.is_available()
    cpus = os.cpu_count() or 1
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if cuda else "cpu")
    p.add_argument("--models", nargs="+", default=MODELS)
    p.add_argument("--batch-size", type=int, default=256 if cuda else 16)
    p.add_argument("--image-size", type=int, default=224 if cuda else 128)
    p.add_argument("--precision", default="bf16" if cuda else "fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=cuda)
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="compile ours (and measure timm compiled); default: on with CUDA")  # fmt: skip
    p.add_argument("--steps", type=int, default=20 if cuda else 2, help="steps per timed round")
    p.add_argument("--warmup", type=int, default=5 if cuda else 1, help="steps before timing (compiles)")
    p.add_argument("--rounds", type=int, default=5 if cuda else 2)
    p.add_argument("--images", type=int, default=16384 if cuda else 128, help="files in the JPEG set")
    p.add_argument("--distinct", type=int, default=4096 if cuda else 128, help="distinct JPEGs among them")
    p.add_argument("--pipeline-size", type=int, default=224, help="(a)'s output size; (c) uses --image-size")
    p.add_argument("--pipeline-rounds", type=int, default=2)
    p.add_argument("--e2e-batches", type=int, default=None if cuda else 3, help="timed batches in (c); all")
    p.add_argument("--skip-batches", type=int, default=4 if cuda else 1, help="untimed batches per epoch")
    p.add_argument("--cpu-workers", type=int, default=cpus, help="CPU loader workers (all cores)")
    p.add_argument("--dali-workers", type=int, default=max(1, cpus // 2), help="file-reading workers (DALI, nvJPEG)")
    p.add_argument("--dali-threads", type=int, default=max(1, cpus // 2 if cuda else cpus), help="DALI's threads")
    p.add_argument("--hw-decoder-load", type=float, default=None, help="DALI: JPEG share for the HW decoder")
    p.add_argument("--budget-s", type=float, default=450 if cuda else 1200, help="no new unit after this")
    p.add_argument("--unit-reserve-s", type=float, default=90 if cuda else 30, help="time a compile may need")
    p.add_argument("--pipeline-reserve-s", type=float, default=20 if cuda else 10)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument("--skip", nargs="*", default=[], choices=["pipeline", "train", "e2e"])
    p.add_argument("--json", type=Path, default=None, help="results, rewritten after every row")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    if on_gpu and not torch.cuda.is_available():
        raise SystemExit("--device cuda but CUDA is not available")
    header = {
        "device": torch.cuda.get_device_name(device) if on_gpu else "cpu",
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "settings": {k: str(v) for k, v in vars(args).items()},
    }
    rec = Recorder(args.json, args.budget_s, header)
    signal.signal(signal.SIGTERM, _stop)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            found, e2e_step = {}, None
            if "pipeline" not in args.skip or "e2e" not in args.skip:
                mean_kb = write_jpegs(folder, args.images, args.distinct, max(1, (os.cpu_count() or 1)))
                rec.results["jpegs"] = {"files": args.images, "distinct": args.distinct, "mean_kb": mean_kb}
            if "pipeline" not in args.skip:
                found = bench_pipelines(args, device, folder, args.images, rec)
            models = [] if "train" in args.skip else args.models
            for name in models:
                step, rate = bench_model(args, device, name, rec)
                if name == E2E_MODEL and step is not None and "e2e" not in args.skip:
                    e2e_step = step
                    if args.pipeline_size != args.image_size or not found:
                        found = pipelines(args, device, folder, args.image_size, rec)
                    bench_end_to_end(args, device, found, args.images, step, rate, rec)
            if "e2e" not in args.skip and e2e_step is None:
                rec.skip("end to end", f"needs {E2E_MODEL} in --models (its synthetic rate is the reference)")
    except Stop:
        rec.skip("the rest of the run", "stopped by SIGTERM (timeout)")
    if not on_gpu:
        rec.skip("GPU rows: nvJPEG and DALI on the GPU, bf16 + channels_last + compile vs timm", NOT_MEASURED_ON_CPU)
    summary(rec.results, on_gpu, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
