"""Batch-1 CPU latency of every deployment path, and the deployment goals as paired A/B ratios -- in one run.

For each model (default Conv-S, Conv-M, Hybrid-M at their native resolution), with the same weights (trained-like:
``make_nondegenerate``) and the same thread count everywhere, these engines are built:

- PyTorch: eager (as built), deployed (``mnv4.deploy`` + channels_last), ``torch.compile`` of the deployed model,
  AOTInductor (``mnv4.export.aoti``, freezing);
- ONNX Runtime: fp32 of our export, fp32 of timm's model exported the same way (reference), int8 (QDQ static,
  ``mnv4.export.quantize.quantize_onnx``);
- LiteRT fp32 and int8 (litert-torch) in the ai-edge-litert interpreter (XNNPACK);
- ExecuTorch fp32 and int8 (``mnv4.export.executorch``, XNNPACK delegate) in its Python runtime.

Part 1, the table: all engines of a model interleaved round-robin (one call of each per round), median ms.
Part 2, the goals: interleaving many engines does not isolate a pair (each call runs on caches the previous engine
left), so each goal ratio is measured as a paired A/B: only A and B, called alternately (the order flips every
round) for ``--pair-rounds`` rounds; the ratio of each round's two times; reported as the median ratio with its
10th-90th percentile spread. The goals (issue 13, plus the ONNX one from before):

- ExecuTorch int8 / ORT int8 <= 1.0 (Conv-S);   ExecuTorch fp32 / ORT fp32 <= 1.1 (every model);
- fastest PyTorch-native path (AOTInductor, torch.compile, ExecuTorch fp32 -- the fastest in the table) / ORT fp32
  <= 1.3 (Conv-S);
- ORT int8 / ORT fp32 <= 0.5 (Conv-S);   our ORT fp32 / timm's ORT fp32 <= 1.0 (every model).

Int8 latency does not depend on what the calibration images show, so without ``--calib`` a few synthetic images are
used (for accuracy, calibrate on real images: ``mnv4 export --int8 --calib``). On a shared machine the absolute
numbers move with the load; the paired ratios much less -- the load average is printed with the results.

    python benchmarks/deploy_latency.py --threads 2 --json deploy_latency.json
"""

from __future__ import annotations

import argparse
import json
import os
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
CONV_S = "mobilenetv4_conv_small"

COLUMNS = [
    ("torch_eager", "torch eager"),
    ("torch_deployed", "torch deployed"),
    ("torch_compile", "deployed+compile"),
    ("aoti", "AOTInductor"),
    ("et_fp32", "ExecuTorch fp32"),
    ("ort_fp32", "ORT fp32"),
    ("ort_fp32_timm", "ORT fp32 (timm)"),
    ("litert_fp32", "LiteRT fp32"),
    ("et_int8", "ExecuTorch int8"),
    ("ort_int8", "ORT int8"),
    ("litert_int8", "LiteRT int8"),
]
PYTORCH_NATIVE = ("torch_compile", "aoti", "et_fp32")

Engine = Callable[[], object]


# ------------------------------------------------------------------------------------------------ timing
# wall: what a user waits (the goals' measure, on a quiet machine). cpu: the process's CPU seconds per call -- with
# one thread, a proxy for the latency of a quiet machine that a crowded one barely disturbs (time slices lost to
# other processes do not count), for measuring on a shared machine.
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def interleaved_medians(fns: dict[str, Engine], warmup: int, runs: int, clock=time.perf_counter) -> dict[str, float]:
    """Median ms of each callable, the timed calls going round-robin (one call of each per round)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {key: [] for key in fns}
    for _ in range(runs):
        for key, fn in fns.items():
            t0 = clock()
            fn()
            times[key].append(clock() - t0)
    return {key: 1e3 * statistics.median(t) for key, t in times.items()}


def paired_ratio(a: Engine, b: Engine, rounds: int, warmup: int, clock=time.perf_counter) -> dict[str, float]:
    """A/B: ``a`` and ``b`` alternately (AB, BA, AB, ...) for ``rounds`` rounds; the median of the per-round ratios
    a/b with its 10th and 90th percentiles, and each side's median ms."""
    for _ in range(warmup):
        a()
        b()
    ta, tb = [], []
    for i in range(rounds):
        for fn, acc in ((a, ta), (b, tb)) if i % 2 == 0 else ((b, tb), (a, ta)):
            t0 = clock()
            fn()
            acc.append(clock() - t0)
    ratios = np.asarray(ta) / np.asarray(tb)
    return {
        "ratio": float(np.median(ratios)),
        "p10": float(np.percentile(ratios, 10)),
        "p90": float(np.percentile(ratios, 90)),
        "a_ms": 1e3 * statistics.median(ta),
        "b_ms": 1e3 * statistics.median(tb),
        "rounds": rounds,
    }


# ------------------------------------------------------------------------------------------------ engines
def synthetic_calibration(folder: Path, size: tuple[int, int], count: int = 32) -> Path:
    """Smooth random RGB images (upsampled noise), enough to calibrate ranges for a latency measurement."""
    from PIL import Image

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        small = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
        Image.fromarray(small).resize((size[1], size[0]), Image.BICUBIC).save(folder / f"{i:03d}.png")
    return folder


def _try(engines: dict[str, Engine], key: str, build: Callable[[], Engine]) -> None:
    """Build one engine; a failure is reported and leaves that cell empty, the run goes on."""
    t0 = time.perf_counter()
    try:
        engines[key] = build()
        print(f"  {key}: built in {time.perf_counter() - t0:.0f} s", flush=True)
    except Exception as err:  # noqa: BLE001 -- one engine's failure must not abort the whole comparison
        print(f"  {key}: FAILED ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})")


def build_engines(model: mnv4.MobileNetV4, size: tuple[int, int], args: argparse.Namespace, work: Path) -> dict:
    from mnv4.export.data import Preprocess

    x = torch.randn(1, 3, *size)
    x_np, x_cl = x.numpy(), x.contiguous(memory_format=torch.channels_last)
    calib = args.calib or synthetic_calibration(work / "calib", size)
    preprocess = Preprocess.for_model(model, size)
    name = model.spec.name
    engines: dict[str, Engine] = {}

    def torch_engine(module, inp) -> Engine:
        def run():
            with torch.inference_mode():
                return module(inp)

        return run

    engines["torch_eager"] = torch_engine(model, x)
    deployed = deploy(model, channels_last=True)
    engines["torch_deployed"] = torch_engine(deployed, x_cl)
    if "compile" not in args.skip:

        def compiled():
            fn = torch_engine(torch.compile(deployed), x_cl)
            fn()  # compile now, not inside the timed loop
            return fn

        _try(engines, "torch_compile", compiled)
    if "aoti" not in args.skip:

        def aoti():
            from mnv4.export.aoti import AOTIRunner, export_aoti

            runner = AOTIRunner(export_aoti(model, work / f"{name}.pt2", input_size=size))
            return lambda: runner.run_tensor(x_cl)

        _try(engines, "aoti", aoti)

    from mnv4.export.onnx import OnnxExportConfig, export_module_onnx, export_onnx, onnx_session, run_session
    from mnv4.export.quantize import quantize_onnx

    ours = export_onnx(model, work / f"{name}.onnx", input_size=size)

    def ort(path) -> Engine:
        session = onnx_session(path, threads=args.threads, spin=False)
        return lambda: run_session(session, x_np)

    engines["ort_fp32"] = ort(ours)

    def timm_ort():
        import timm

        ref = timm.create_model(name, pretrained=False).eval()
        ref.load_state_dict(model.state_dict())
        return ort(export_module_onnx(ref, work / f"{name}.timm.onnx", OnnxExportConfig(size), ["logits"]))

    _try(engines, "ort_fp32_timm", timm_ort)
    _try(engines, "ort_int8", lambda: ort(quantize_onnx(ours, work / f"{name}.int8.onnx", calib,
                                                        preprocess=preprocess, num_images=32).path))
    if "litert" not in args.skip:
        from mnv4.export.litert import LiteRTRunner, export_litert
        from mnv4.export.quantize import export_litert_int8

        def litert(path) -> Engine:
            runner = LiteRTRunner(path, threads=args.threads)
            return lambda: runner(x_np)

        _try(engines, "litert_fp32", lambda: litert(export_litert(model, work / f"{name}.tflite", input_size=size)))
        _try(engines, "litert_int8", lambda: litert(export_litert_int8(
            model, work / f"{name}.int8.tflite", calib, input_size=size, num_images=32).path))
    if "executorch" not in args.skip:
        from mnv4.export.executorch import ExecuTorchRunner, export_executorch
        from mnv4.export.quantize import export_executorch_int8

        def executorch(path) -> Engine:
            runner = ExecuTorchRunner(path, threads=args.threads)
            inputs = [x]
            return lambda: runner.method.execute(inputs)

        _try(engines, "et_fp32", lambda: executorch(export_executorch(model, work / f"{name}.pte", input_size=size)))
        _try(engines, "et_int8", lambda: executorch(export_executorch_int8(
            model, work / f"{name}.int8.pte", calib, input_size=size, num_images=32).path))
    return engines


# ------------------------------------------------------------------------------------------------ goals
def goal_pairs(name: str, medians: dict[str, float]) -> list[tuple[str, str, str, float]]:
    """(goal label, A, B, threshold) for one model: A/B must be <= threshold."""
    pairs = [("ExecuTorch fp32 / ORT fp32", "et_fp32", "ort_fp32", 1.1),
             ("ours ORT fp32 / timm ORT fp32", "ort_fp32", "ort_fp32_timm", 1.0)]
    if name == CONV_S:
        native = [k for k in PYTORCH_NATIVE if k in medians]
        if native:
            best = min(native, key=medians.__getitem__)
            pairs.append((f"fastest PyTorch-native ({best}) / ORT fp32", best, "ort_fp32", 1.3))
        pairs += [("ExecuTorch int8 / ORT int8", "et_int8", "ort_int8", 1.0),
                  ("ORT int8 / ORT fp32", "ort_int8", "ort_fp32", 0.5)]
    return [p for p in pairs if p[1] in medians and p[2] in medians]


def bench_model(name: str, args: argparse.Namespace, work: Path) -> dict:
    torch.manual_seed(0)
    model = mnv4.create_model(name).eval()
    res = args.size or model.spec.resolution
    size = (res, res)
    # Trained-like weights (BN statistics measured, unit-scale activations): random-init BN leaves activations that
    # decay into float denormals in deep layers, which slows CPU kernels several-fold and says nothing about a real
    # model. timm's model gets the same weights.
    make_nondegenerate(model, input_size=size, batch_size=2, passes=1)
    engines = build_engines(model, size, args, work)
    row: dict = {"model": name, "size": res, "load_before": os.getloadavg()[0]}
    clock = CLOCKS[args.clock]
    medians = interleaved_medians(engines, args.warmup, args.runs, clock)
    row.update(medians)
    row["goals"] = []
    for label, a, b, threshold in goal_pairs(name, medians):
        result = paired_ratio(engines[a], engines[b], args.pair_rounds, args.warmup, clock)
        row["goals"].append({"goal": label, "a": a, "b": b, "threshold": threshold, **result,
                             "met": result["ratio"] <= threshold})
    row["load_after"] = os.getloadavg()[0]
    return row


# ------------------------------------------------------------------------------------------------ report
def _fmt(value) -> str:
    return f"{value:.2f}" if isinstance(value, float) else "-"


def print_report(rows: list[dict], args: argparse.Namespace) -> None:
    what = "latency" if args.clock == "wall" else "CPU time per call (process CPU seconds, not wall clock)"
    print(f"\nbatch-1 {what}, median ms of {args.runs} interleaved calls, {args.threads} threads")
    print("| model | res | " + " | ".join(title for _, title in COLUMNS) + " |")
    print("|" + "---|" * (len(COLUMNS) + 2))
    for row in rows:
        print(f"| {row['model']} | {row['size']} | " + " | ".join(_fmt(row.get(k)) for k, _ in COLUMNS) + " |")
    print(f"\ngoals, paired A/B ({args.pair_rounds} alternating rounds each): median of per-round A/B, [p10, p90]")
    print("| model | goal | A ms | B ms | A/B | spread | goal | met |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        for g in row["goals"]:
            print(f"| {row['model']} | {g['goal']} | {g['a_ms']:.2f} | {g['b_ms']:.2f} | {g['ratio']:.2f}x | "
                  f"[{g['p10']:.2f}, {g['p90']:.2f}] | <= {g['threshold']} | {'yes' if g['met'] else 'no'} |")
    loads = [f"{r['model']} {r['load_before']:.1f} -> {r['load_after']:.1f}" for r in rows]
    print(f"\nload average (1 min) while measuring: {'; '.join(loads)} on {os.cpu_count()} CPUs")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    p.add_argument("--size", type=int, default=None, help="input size (default: each model's native)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=50, help="interleaved rounds of the table (>= 50)")
    p.add_argument("--pair-rounds", type=int, default=200, help="alternating rounds of each paired A/B (>= 50)")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--calib", type=Path, default=None, help="calibration images for the int8 rows")
    p.add_argument("--clock", choices=tuple(CLOCKS), default="wall",
                   help="wall (default: latency, for a quiet machine) or cpu (CPU time per call: with --threads 1, "
                   "a proxy that a shared machine barely disturbs)")
    p.add_argument("--skip", nargs="*", default=[], choices=("compile", "aoti", "litert", "executorch"),
                   help="engines to leave out (AOTInductor and LiteRT take a minute or more per model to build)")
    p.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    args = p.parse_args(argv)
    if args.runs < 50 or args.pair_rounds < 50:
        p.error("--runs and --pair-rounds must be >= 50 (the medians are meant to be comparable)")
    from mnv4.export.toolkit_logs import native_stderr_to, quiet_toolkit_env

    quiet_toolkit_env()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    rows = []

    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "toolkits.log"
        for name in args.models:
            print(f"benchmarking {name} ...", flush=True)
            with native_stderr_to(log):  # the toolkits' C++ chatter; our progress lines go to stdout
                rows.append(bench_model(name, args, Path(tmp)))
            if len(args.models) > 1:  # each model's results as soon as they exist: a long run cut short keeps them
                print_report(rows[-1:], args)
    print_report(rows, args)
    if args.json:
        args.json.write_text(json.dumps({"threads": args.threads, "clock": args.clock, "runs": args.runs,
                                         "pair_rounds": args.pair_rounds, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
