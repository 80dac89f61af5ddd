"""Training throughput: our training step vs timm's model under the same settings (interleaved, one run), and the
input pipeline alone (CPU ImageFolder loader vs the GPU decode path) on JPEGs this script generates.

    python benchmarks/train_throughput.py                      # CPU: small settings, reports what it measured
    python benchmarks/train_throughput.py --device cuda        # GPU: compile + channels_last + bf16 vs timm eager

Goals on a GPU (issue 6): >= 1.5x timm eager img/s for Conv-S, Conv-M, Hybrid-M with compile, channels_last and
bf16; GPU input pipeline >= 12k img/s at 224. The GPU rows are only printed when CUDA is present; on a CPU-only
machine they are reported as not measured.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

DEFAULT_MODELS = ["mobilenetv4_conv_small", "mobilenetv4_conv_medium", "mobilenetv4_hybrid_medium"]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_step(model, device, precision: str, channels_last: bool, compile_model: bool):
    """One optimiser step (forward, CE loss, backward, AdamW) as a closure over a fixed batch."""
    model = model.to(device).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    forward = torch.compile(model) if compile_model else model
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)

    def step(images: torch.Tensor, labels: torch.Tensor) -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = F.cross_entropy(forward(images).float(), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def bench_models(args, device: torch.device) -> list[dict]:
    import mnv4

    try:
        import timm
    except ImportError:
        timm = None
        print("timm is not installed: measuring ours only (pip install timm)", file=sys.stderr)
    ours_compile = args.compile if args.compile is not None else device.type == "cuda"
    rows = []
    for name in args.models:
        images = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
        if args.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        labels = torch.randint(0, 1000, (args.batch_size,), device=device)
        contenders = {
            "ours": make_step(mnv4.create_model(name), device, args.precision, args.channels_last, ours_compile)
        }
        if timm is not None:
            contenders["timm eager"] = make_step(
                timm.create_model(name, pretrained=False), device, args.precision, args.channels_last, False
            )
        for step in contenders.values():  # warm-up (and compilation)
            for _ in range(args.warmup):
                step(images, labels)
        sync(device)
        rates: dict[str, list[float]] = {k: [] for k in contenders}
        for _ in range(args.rounds):  # interleaved: both see the same machine state
            for key, step in contenders.items():
                sync(device)
                start = time.perf_counter()
                for _ in range(args.steps):
                    step(images, labels)
                sync(device)
                rates[key].append(args.steps * args.batch_size / (time.perf_counter() - start))
        row = {"model": name, "ours_img_s": statistics.median(rates["ours"]), "ours_compiled": ours_compile}
        if "timm eager" in rates:
            row["timm_eager_img_s"] = statistics.median(rates["timm eager"])
            row["ratio"] = row["ours_img_s"] / row["timm_eager_img_s"]
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
    return rows


def write_jpegs(folder: Path, count: int, size: tuple[int, int] = (500, 375)) -> None:
    """Smooth random photos-like JPEGs (ImageNet's typical 500x375), one class folder."""
    from PIL import Image

    (folder / "c0").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        small = Image.fromarray((rng.random((12, 16, 3)) * 255).astype(np.uint8))
        small.resize(size, Image.BICUBIC).save(folder / "c0" / f"{i:05d}.jpg", quality=90)


def bench_pipelines(args, device: torch.device, folder: Path) -> list[dict]:
    from mnv4.train import TrainConfig
    from mnv4.train.data import (
        EncodedImageDataset,
        GpuAugment,
        ImageFolderDataset,
        MicroBatchSampler,
        collate,
        train_transform,
    )
    from mnv4.train.inputs import resolve_model_defaults

    # Inception crop + flip, no RandAugment (the pipeline's fixed cost); Conv-S's mean/std, as a run resolves them
    cfg = resolve_model_defaults(TrainConfig(image_size=args.pipeline_size), "mobilenetv4_conv_small")
    size, batch = args.pipeline_size, args.pipeline_batch
    rows = []

    def run(name: str, dataset, augment, dev: torch.device) -> None:
        n = len(dataset) // batch * batch
        total, start = 0, None
        for epoch in range(args.pipeline_epochs + 1):  # epoch 0 warms up (workers, nvJPEG handles)
            if epoch == 1:
                sync(dev)
                start = time.perf_counter()
            sampler = MicroBatchSampler(n, batch, 1, 0, 1, seed=0, epoch=epoch)
            loader = torch.utils.data.DataLoader(
                dataset, batch_sampler=sampler, num_workers=args.workers, collate_fn=collate,
                pin_memory=dev.type == "cuda" and augment is None, persistent_workers=False,
            )  # fmt: skip
            for images, labels, *_ in loader:
                if augment is not None:
                    images, labels = augment(images, labels)
                else:
                    images = images.to(dev, non_blocking=True)
                if epoch:
                    total += len(labels)
        sync(dev)
        rate = total / (time.perf_counter() - start)
        rows.append({"pipeline": name, "device": str(dev), "img_s": rate, "size": size, "workers": args.workers})
        print(json.dumps(rows[-1]), file=sys.stderr)

    run("CPU ImageFolder (PIL decode + v2 transforms in workers)",
        ImageFolderDataset(folder, train_transform(size, cfg)), None, device)  # fmt: skip
    if device.type == "cuda":
        run("GPU: bytes in workers, batched nvJPEG decode + crop/flip/normalise on GPU",
            EncodedImageDataset(folder), GpuAugment(size, cfg, device), device)  # fmt: skip
    else:
        cpu = torch.device("cpu")
        run("GPU-path code run on the CPU (decode_jpeg on CPU; NOT a GPU number)",
            EncodedImageDataset(folder), GpuAugment(size, cfg, cpu), cpu)  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if cuda else "cpu")
    p.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    p.add_argument("--batch-size", type=int, default=256 if cuda else 16)
    p.add_argument("--image-size", type=int, default=224 if cuda else 128)
    p.add_argument("--precision", default="bf16" if cuda else "fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=cuda)
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None, help="default: on for CUDA")
    p.add_argument("--steps", type=int, default=20 if cuda else 2)
    p.add_argument("--warmup", type=int, default=10 if cuda else 1)
    p.add_argument("--rounds", type=int, default=5 if cuda else 3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--images", type=int, default=4096 if cuda else 256, help="JPEGs generated for the pipelines")
    p.add_argument("--pipeline-size", type=int, default=224)
    p.add_argument("--pipeline-batch", type=int, default=256 if cuda else 32)
    p.add_argument("--pipeline-epochs", type=int, default=2)
    p.add_argument("--workers", type=int, default=8 if cuda else 2)
    p.add_argument("--skip-models", action="store_true")
    p.add_argument("--skip-pipeline", action="store_true")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not cuda:
        raise SystemExit("--device cuda but CUDA is not available")
    results: dict = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                     "torch": torch.__version__, "settings": {k: str(v) for k, v in vars(args).items()}}  # fmt: skip
    if not args.skip_models:
        results["train_step"] = bench_models(args, device)
    if not args.skip_pipeline:
        with tempfile.TemporaryDirectory() as tmp:
            write_jpegs(Path(tmp), args.images)
            results["pipeline"] = bench_pipelines(args, device, Path(tmp))

    print(f"\ndevice: {results['device']}, torch {results['torch']}")
    if "train_step" in results:
        s = args
        print(f"\ntraining step, batch {s.batch_size} at {s.image_size} px, {s.precision}, channels_last="
              f"{s.channels_last}; median of {s.rounds} interleaved rounds of {s.steps} steps")  # fmt: skip
        print(f"{'model':28s} {'ours img/s':>11s} {'timm eager':>11s} {'ratio':>6s}  ours compiled")
        for r in results["train_step"]:
            timm_rate = f"{r['timm_eager_img_s']:11.1f}" if "timm_eager_img_s" in r else f"{'-':>11s}"
            ratio = f"{r['ratio']:6.2f}" if "ratio" in r else f"{'-':>6s}"
            print(f"{r['model']:28s} {r['ours_img_s']:11.1f} {timm_rate} {ratio}  {r['ours_compiled']}")
    if "pipeline" in results:
        print(f"\ninput pipeline alone ({args.images} generated 500x375 JPEGs, {args.pipeline_size} px, "
              f"{args.workers} workers)")  # fmt: skip
        for r in results["pipeline"]:
            print(f"  {r['img_s']:9.1f} img/s  {r['pipeline']}")
    if device.type != "cuda":
        print("\nGPU rows (compiled bf16 step vs timm eager; nvJPEG pipeline): NOT MEASURED — no CUDA device here.")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
