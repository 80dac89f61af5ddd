"""Batch-1 CPU latency of the deployment paths, side by side in one run (issue: deployment).

For each model (default Conv-S, Conv-M, Hybrid-M at their native resolution), with the same thread count everywhere:

- PyTorch eager (the model as built: BN, layer scale, SDPA attention), NCHW;
- PyTorch deployed: ``mnv4.deploy`` (BN / layer scale folded) + channels_last, eager and ``torch.compile``;
- ONNX Runtime fp32 of our export (``mnv4.export.onnx.export_onnx``);
- ONNX Runtime fp32 of timm's model of the same variant, exported with the same exporter settings (reference);
- ONNX Runtime int8 (QDQ static, per-channel) of our export;
- LiteRT fp32 and int8 (litert-torch) in the ai-edge-litert interpreter (XNNPACK).

Median of ``--runs`` (>= 50) timed calls after ``--warmup`` calls each; the timed calls are interleaved round-robin
across the engines so that load on a shared machine affects all of them alike. Prints a table and the goal ratios:
ours ORT fp32 / timm ORT fp32 (<= 1.0), ORT int8 / ORT fp32 on Conv-S (<= 0.5), PyTorch deployed / ORT fp32
(<= 1.5). Int8 latency does not depend on what the calibration images show, so without ``--calib`` a few synthetic
images are used (for accuracy, calibrate on real images: ``mnv4 export --int8 --calib``).

    python benchmarks/deploy_latency.py --threads 2 --runs 50 --json deploy_latency.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

import mnv4
from mnv4.deploy import deploy
from mnv4.testing import make_nondegenerate

DEFAULT_MODELS = ("mobilenetv4_conv_small", "mobilenetv4_conv_medium", "mobilenetv4_hybrid_medium")


def interleaved_medians(fns: dict[str, Callable[[], object]], warmup: int, runs: int) -> dict[str, float]:
    """Median ms of each callable; the timed calls go round-robin (one call of each per round), so a load spike on
    the shared machine hits every engine alike and the ratios stay comparable."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {key: [] for key in fns}
    for _ in range(runs):
        for key, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - t0)
    return {key: 1e3 * statistics.median(t) for key, t in times.items()}


def synthetic_calibration(folder: Path, size: tuple[int, int], count: int = 32) -> Path:
    """Smooth random RGB images (upsampled noise), enough to calibrate ranges for a latency measurement."""
    from PIL import Image

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        small = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
        Image.fromarray(small).resize((size[1], size[0]), Image.BICUBIC).save(folder / f"{i:03d}.png")
    return folder


def bench_model(name: str, args: argparse.Namespace, work: Path) -> dict:
    from mnv4.export.onnx import OnnxExportConfig, export_module_onnx, export_onnx, onnx_session, run_session
    from mnv4.export.quantize import quantize_onnx

    torch.manual_seed(0)
    model = mnv4.create_model(name).eval()
    res = args.size or model.spec.resolution
    size = (res, res)
    # Trained-like weights (BN statistics measured, unit-scale activations): random-init BN leaves activations that
    # decay into float denormals in deep layers, which slows CPU kernels several-fold and says nothing about a real
    # model. timm's model below gets the same weights.
    make_nondegenerate(model, input_size=size, batch_size=2, passes=1)
    x = torch.randn(1, 3, *size)
    x_np = x.numpy()
    row: dict[str, float | str | None] = {"model": name, "size": res}
    fns: dict[str, Callable[[], object]] = {}

    def no_grad(fn: Callable[[], object]) -> Callable[[], object]:
        return lambda: torch.inference_mode()(fn)()

    fns["torch_eager"] = no_grad(lambda: model(x))
    deployed = deploy(model, channels_last=True)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    fns["torch_deployed"] = no_grad(lambda: deployed(x_cl))
    if not args.skip_compile:
        try:
            compiled = torch.compile(deployed)
            with torch.inference_mode():
                compiled(x_cl)  # compile now, not inside the timed loop
            fns["torch_deployed_compile"] = no_grad(lambda: compiled(x_cl))
        except Exception as err:  # noqa: BLE001 - report, do not abort the whole table
            print(f"  torch.compile failed for {name}: {type(err).__name__}: {err}")

    ours = export_onnx(model, work / f"{name}.onnx", input_size=size)
    s_ours = onnx_session(ours, threads=args.threads, spin=False)
    fns["ort_fp32"] = lambda: run_session(s_ours, x_np)

    try:
        import timm

        ref = timm.create_model(name, pretrained=False).eval()
        ref.load_state_dict(model.state_dict())
        cfg = OnnxExportConfig(size)
        theirs = export_module_onnx(ref, work / f"{name}.timm.onnx", cfg, ["logits"])
        s_theirs = onnx_session(theirs, threads=args.threads, spin=False)
        fns["ort_fp32_timm"] = lambda: run_session(s_theirs, x_np)
    except ImportError:
        print("  timm is not installed: no reference row")

    calib = args.calib or synthetic_calibration(work / "calib", size)
    q = quantize_onnx(ours, work / f"{name}.int8.onnx", calib, input_size=size, num_images=32)
    s_q = onnx_session(q.path, threads=args.threads, spin=False)
    fns["ort_int8"] = lambda: run_session(s_q, x_np)

    if not args.skip_litert:
        try:
            from mnv4.export.litert import LiteRTRunner, export_litert
            from mnv4.export.quantize import export_litert_int8

            lite = export_litert(model, work / f"{name}.tflite", input_size=size)
            run32 = LiteRTRunner(lite, threads=args.threads)
            fns["litert_fp32"] = lambda: run32(x_np)
            lite8 = export_litert_int8(model, work / f"{name}.int8.tflite", calib, input_size=size, num_images=32)
            run8 = LiteRTRunner(lite8.path, threads=args.threads)
            fns["litert_int8"] = lambda: run8(x_np)
        except Exception as err:  # noqa: BLE001
            print(f"  LiteRT failed for {name}: {type(err).__name__}: {err}")
    row.update(interleaved_medians(fns, args.warmup, args.runs))
    return row


COLUMNS = [
    ("torch_eager", "torch eager"),
    ("torch_deployed", "torch deployed"),
    ("torch_deployed_compile", "deployed+compile"),
    ("ort_fp32", "ORT fp32"),
    ("ort_fp32_timm", "ORT fp32 (timm)"),
    ("ort_int8", "ORT int8"),
    ("litert_fp32", "LiteRT fp32"),
    ("litert_int8", "LiteRT int8"),
]


def _fmt(value) -> str:
    return f"{value:.2f}" if isinstance(value, float) else "-"


def _ratio(a, b) -> str:
    return f"{a / b:.2f}x" if isinstance(a, float) and isinstance(b, float) else "-"


def print_table(rows: list[dict], threads: int) -> None:
    print(f"\nbatch-1 latency, median ms, {threads} threads")
    header = "| model | res | " + " | ".join(title for _, title in COLUMNS) + " |"
    print(header)
    print("|" + "---|" * (len(COLUMNS) + 2))
    for row in rows:
        cells = " | ".join(_fmt(row.get(key)) for key, _ in COLUMNS)
        print(f"| {row['model']} | {row['size']} | {cells} |")
    print("\nratios (goal): ours ORT / timm ORT (<= 1.0) | ORT int8 / ORT fp32 (<= 0.5 on Conv-S) | "
          "torch deployed / ORT fp32 (<= 1.5) | deployed+compile / ORT fp32")
    for row in rows:
        best_torch = min(v for v in (row.get("torch_deployed"), row.get("torch_deployed_compile")) if v)
        print(
            f"{row['model']:28s} {_ratio(row.get('ort_fp32'), row.get('ort_fp32_timm')):>8s} "
            f"{_ratio(row.get('ort_int8'), row.get('ort_fp32')):>8s} "
            f"{_ratio(row.get('torch_deployed'), row.get('ort_fp32')):>8s} "
            f"{_ratio(best_torch, row.get('ort_fp32')):>8s}"
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    p.add_argument("--size", type=int, default=None, help="input size (default: each model's native)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--calib", type=Path, default=None, help="calibration images for the int8 rows")
    p.add_argument("--skip-litert", action="store_true", help="skip the LiteRT rows (conversion takes ~1 min each)")
    p.add_argument("--skip-compile", action="store_true")
    p.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    args = p.parse_args(argv)
    if args.runs < 50:
        p.error("--runs must be >= 50 (the medians are meant to be comparable)")
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            print(f"benchmarking {name} ...", flush=True)
            rows.append(bench_model(name, args, Path(tmp)))
    print_table(rows, args.threads)
    if args.json:
        args.json.write_text(json.dumps({"threads": args.threads, "runs": args.runs, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
