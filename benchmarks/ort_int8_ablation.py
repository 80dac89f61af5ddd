"""What each ONNX Runtime int8 choice buys on Conv-S: every variant as a paired A/B against ORT fp32.

Variants of ``mnv4.export.quantize.OrtQuantSettings`` (one change at a time from the default), and ORT's graph
optimisation level. For each: the int8 / fp32 latency ratio (median of per-round ratios over ``--rounds``
alternating rounds, with the p10-p90 spread) and the logit SQNR against the fp32 file on the calibration images (a
check that a faster variant did not break the numbers). Also prints ORT's per-op profile of the default int8 file
and of the fp32 file, to show where the time goes.

    python benchmarks/ort_int8_ablation.py --threads 2
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from deploy_latency import CLOCKS, paired_ratio, synthetic_calibration  # noqa: E402

import mnv4  # noqa: E402
from mnv4.testing import make_nondegenerate  # noqa: E402

DEFAULT = "default"


def variants():
    from mnv4.export.quantize import FAST_ORT_INT8, OrtQuantSettings

    base = OrtQuantSettings()
    return {
        DEFAULT: (base, "all"),
        "7-bit s8 weights (FAST_ORT_INT8)": (FAST_ORT_INT8, "all"),
        "8-bit s8 weights (saturates w/o VNNI)": (dataclasses.replace(base, weights="s8"), "all"),
        "s8 activations": (dataclasses.replace(base, activations="s8"), "all"),
        "per-tensor weights": (dataclasses.replace(base, per_channel=False), "all"),
        "first conv fp32": (dataclasses.replace(base, fp32_first_conv=True), "all"),
        "Add fp32": (dataclasses.replace(base, fp32_ops=("Add",)), "all"),
        "classifier (Gemm) fp32": (dataclasses.replace(base, fp32_ops=("Gemm",)), "all"),
        "no ORT pre-process": (dataclasses.replace(base, pre_process=False), "all"),
        "ORT optimisation: extended": (base, "extended"),
        "ORT optimisation: basic": (base, "basic"),
    }


def session(path, threads: int, level: str = "all"):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.graph_optimization_level = {
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    }[level]
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def op_profile(path, threads: int, x: np.ndarray, runs: int = 50) -> dict[str, float]:
    """ms per run spent in each op type (ORT's profiler, node kernel times)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.enable_profiling = True
    opts.profile_file_prefix = str(Path(path).with_suffix(""))
    s = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    for _ in range(runs):
        s.run(None, {"input": x})
    events = json.loads(Path(s.end_profiling()).read_text())
    per_op: dict[str, float] = collections.defaultdict(float)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per_op[e["args"]["op_name"]] += e["dur"] / 1e3 / (runs + 1)  # + the session's first run
    return dict(sorted(per_op.items(), key=lambda kv: -kv[1]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="mobilenetv4_conv_small")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=200)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--calib", type=Path, default=None)
    p.add_argument("--clock", choices=tuple(CLOCKS), default="wall", help="see deploy_latency.py --clock")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    from mnv4.export.data import Preprocess, calibration_images, load_batch
    from mnv4.export.onnx import export_onnx
    from mnv4.export.quantize import quantize_onnx
    from mnv4.export.verify import sqnr_db

    torch.manual_seed(0)
    model = mnv4.create_model(args.model).eval()
    size = (model.spec.resolution, model.spec.resolution)
    make_nondegenerate(model, input_size=size, batch_size=2, passes=1)
    x = torch.randn(1, 3, *size).numpy()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        calib = args.calib or synthetic_calibration(work / "calib", size)
        preprocess = Preprocess.for_model(model, size)
        images = load_batch(calibration_images(calib, 16, seed=1), preprocess)
        fp32 = export_onnx(model, work / "fp32.onnx", input_size=size)
        s32 = session(fp32, args.threads)
        ref = np.concatenate([s32.run(None, {"input": im[None]})[0] for im in images])
        rows = []
        for label, (settings, level) in variants().items():
            path = work / f"{len(rows)}.int8.onnx"
            quantize_onnx(fp32, path, calib, preprocess=preprocess, num_images=32, settings=settings)
            s8 = session(path, args.threads, level)
            out = np.concatenate([s8.run(None, {"input": im[None]})[0] for im in images])
            pair = paired_ratio(lambda s=s8: s.run(None, {"input": x}), lambda: s32.run(None, {"input": x}),
                                args.rounds, args.warmup, CLOCKS[args.clock])
            rows.append({"variant": label, "sqnr_db": sqnr_db(out, ref), **pair})
            print(f"{label:34s} int8/fp32 {pair['ratio']:.3f} [{pair['p10']:.2f}, {pair['p90']:.2f}] "
                  f"({pair['a_ms']:.2f} vs {pair['b_ms']:.2f} ms), SQNR vs fp32 {rows[-1]['sqnr_db']:.1f} dB",
                  flush=True)
        print("\nper-op time (ORT profiler, ms per run):")
        for name, path in (("fp32", fp32), ("int8 default", work / "0.int8.onnx")):
            prof = op_profile(path, args.threads, x)
            print(f"  {name}: total {sum(prof.values()):.2f} ms; " +
                  ", ".join(f"{op} {ms:.2f}" for op, ms in list(prof.items())[:8]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
