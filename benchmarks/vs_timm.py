"""mnv4 against timm's definition of the same model, side by side in one run.

CPU: batch-1 eager inference latency, fixed threads, warm-up, then N timed runs per model; ours and timm's runs are
interleaved (one of each per round) so that machine noise hits both alike. Reports medians, p90 and the ratio
ours / timm (< 1 means mnv4 is faster).

CUDA (when present): training throughput, img/s, bf16 autocast, channels_last, batch 256 (eager, and compiled with
--compile), same interleaving.

    python benchmarks/vs_timm.py                       # the five paper models, CPU, 2 threads
    python benchmarks/vs_timm.py --models mobilenetv4_conv_small --runs 50 --json out.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

import mnv4
from mnv4.testing import make_nondegenerate

PAPER = ["mobilenetv4_conv_small", "mobilenetv4_conv_medium", "mobilenetv4_conv_large",
         "mobilenetv4_hybrid_medium", "mobilenetv4_hybrid_large"]


def _pair(name: str):
    import timm

    ref = timm.create_model(name, pretrained=False)
    # Trained-like weights (measured BN statistics) so that no layer runs on float denormals, as random-init BN
    # can leave them; both models get exactly the same weights.
    make_nondegenerate(ref, input_size=(128, 128), batch_size=2, passes=1)
    ours = mnv4.create_model(name).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ours, ref


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


@torch.inference_mode()
def cpu_latency(name: str, runs: int, warmup: int, size: int | None) -> dict:
    ours, ref = _pair(name)
    res = size or ours.spec.resolution
    x = torch.randn(1, 3, res, res)
    for _ in range(warmup):
        ours(x), ref(x)
    times = {"mnv4": [], "timm": []}
    for i in range(runs):
        order = (("mnv4", ours), ("timm", ref)) if i % 2 == 0 else (("timm", ref), ("mnv4", ours))
        for key, model in order:
            t0 = time.perf_counter()
            model(x)
            times[key].append((time.perf_counter() - t0) * 1e3)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "model": name, "resolution": res,
        "mnv4_ms": med["mnv4"], "timm_ms": med["timm"],
        "mnv4_p90_ms": _pct(times["mnv4"], 0.9), "timm_p90_ms": _pct(times["timm"], 0.9),
        "ratio": med["mnv4"] / med["timm"],
    }


def cuda_train_throughput(name: str, batch: int, steps: int, compile_: bool) -> dict:
    ours, ref = _pair(name)
    res = ours.spec.resolution
    dev = torch.device("cuda")
    x = torch.randn(batch, 3, res, res, device=dev).to(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch,), device=dev)
    runners = {}
    for key, model in (("mnv4", ours), ("timm", ref)):
        model = model.to(dev).to(memory_format=torch.channels_last).train()
        opt = torch.optim.SGD(model.parameters(), lr=1e-3)
        fwd = torch.compile(model) if compile_ else model

        def step(model=fwd, opt=opt):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        for _ in range(5 if not compile_ else 10):  # warm-up (and compilation)
            step()
        runners[key] = step
    torch.cuda.synchronize()
    rates = {"mnv4": [], "timm": []}
    for _ in range(3):
        for key, step in runners.items():
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(steps):
                step()
            torch.cuda.synchronize()
            rates[key].append(batch * steps / (time.perf_counter() - t0))
    best = {k: max(v) for k, v in rates.items()}
    return {"model": name, "resolution": res, "batch": batch, "compile": compile_,
            "mnv4_img_s": best["mnv4"], "timm_img_s": best["timm"], "ratio": best["mnv4"] / best["timm"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=PAPER)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=30, help="timed CPU runs per model (>= 30)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--size", type=int, default=None, help="input size (default: native resolution)")
    p.add_argument("--no-cpu", action="store_true")
    p.add_argument("--cuda-batch", type=int, default=256)
    p.add_argument("--cuda-steps", type=int, default=20)
    p.add_argument("--compile", action="store_true", help="also measure torch.compile on CUDA")
    p.add_argument("--json", default=None, help="write results here")
    args = p.parse_args()

    import timm

    torch.set_num_threads(args.threads)
    env = {"torch": torch.__version__, "timm": timm.__version__, "mnv4": mnv4.__version__,
           "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
           "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
    print("environment:", json.dumps(env))
    results: dict = {"env": env, "cpu": [], "cuda": []}
    if not args.no_cpu:
        print(f"\nCPU batch-1 eager latency, {args.threads} threads, median of {args.runs} (after {args.warmup} "
              "warm-up), interleaved")
        print(f"{'model':30s} {'res':>4s} {'mnv4 ms':>9s} {'timm ms':>9s} {'mnv4 p90':>9s} {'timm p90':>9s} "
              f"{'ours/timm':>9s}")
        for name in args.models:
            r = cpu_latency(name, args.runs, args.warmup, args.size)
            results["cpu"].append(r)
            print(f"{name:30s} {r['resolution']:>4d} {r['mnv4_ms']:>9.2f} {r['timm_ms']:>9.2f} "
                  f"{r['mnv4_p90_ms']:>9.2f} {r['timm_p90_ms']:>9.2f} {r['ratio']:>9.3f}")
    if torch.cuda.is_available():
        for compile_ in (False, True) if args.compile else (False,):
            print(f"\nCUDA training img/s, bf16 autocast, channels_last, batch {args.cuda_batch}, "
                  f"{'torch.compile' if compile_ else 'eager'}")
            print(f"{'model':30s} {'res':>4s} {'mnv4':>9s} {'timm':>9s} {'ours/timm':>9s}")
            for name in args.models:
                r = cuda_train_throughput(name, args.cuda_batch, args.cuda_steps, compile_)
                results["cuda"].append(r)
                print(f"{name:30s} {r['resolution']:>4d} {r['mnv4_img_s']:>9.0f} {r['timm_img_s']:>9.0f} "
                      f"{r['ratio']:>9.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
