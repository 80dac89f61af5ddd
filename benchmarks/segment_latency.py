"""Batch-1 CPU latency of MobileNetV4 segmenters next to torchvision's MobileNetV3 ones, in PyTorch eager and ONNX
Runtime, at 512x512.

Segmenters (21 classes, VOC's; output stride 16; the whole model: backbone, head, upsampling to 512x512):

- LR-ASPP (``mnv4.segmentation.lraspp_mobilenetv4``: torchvision's ``LRASPP`` head) on MNv4 Conv-S, Conv-M, TF's
  ConvMediumSeg and Hybrid-M, against torchvision's ``lraspp_mobilenet_v3_large``;
- DeepLabV3 (torchvision's ``DeepLabHead``, no aux head) on MNv4 Conv-M, against torchvision's
  ``deeplabv3_mobilenet_v3_large``.

Weights are random but "trained-like" (``mnv4.testing.make_nondegenerate``: real BN statistics, no float denormals,
which would slow CPU kernels several-fold). Both sides are exported the same way (``mnv4.export.onnx``'s writer:
TorchScript exporter, opset 18, onnxslim), and ONNX Runtime folds BN into the convs for both. Each timed call goes
round-robin over all segmenters and engines (``interleaved_medians`` from deploy_latency.py), ``--repeats`` times;
the table gives the median of the repeats' medians, and each MNv4 segmenter's ratio to its MobileNetV3 reference
with the min-max over repeats (the spread load on a shared machine causes). MACs count convs, linears and the Mobile
MQA matmuls (``mnv4.analysis``); torchvision's published "GFLOPS" for these two models are the same count (checked:
the references at 520 px are printed next to torchvision's figures).

    python benchmarks/segment_latency.py --threads 1 --runs 20 --repeats 3 --json segment_latency.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from deploy_latency import interleaved_medians

from mnv4.analysis import count_macs, count_params
from mnv4.segmentation.summary import PUBLISHED, SEGMENTERS, build_segmenter, row_name
from mnv4.segmentation.summary import REFERENCES as REFERENCE
from mnv4.testing import make_nondegenerate

NUM_CLASSES = 21
SIZE = 512
MNV4 = SEGMENTERS  # the rows of `mnv4 segment models`


class Logits(torch.nn.Module):
    """The ``"out"`` tensor of a torchvision segmentation model (ONNX output ``logits``)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)["out"]


def build(name: str) -> torch.nn.Module:
    """Segmenter in eval mode with trained-like BN statistics, for a row name (``mnv4.segmentation.summary``)."""
    model = build_segmenter(name, NUM_CLASSES)
    if name not in REFERENCE.values():
        model.backbone.body.set_attention_impl("math")  # what the ONNX export traces (same results as SDPA)
    return make_nondegenerate(model, input_size=(256, 256), batch_size=2, passes=1)


def time_all(names: list[str], args: argparse.Namespace, work: Path) -> dict[str, dict]:
    from mnv4.export.onnx import OnnxExportConfig, export_module_onnx, onnx_session

    rows: dict[str, dict] = {}
    fns = {}
    image = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    batch = image.numpy()
    cfg = OnnxExportConfig((SIZE, SIZE), dynamic_batch=False)
    for name in names:
        print(f"building and exporting {name} ...", flush=True)
        model = build(name)
        rows[name] = {"params": count_params(model), "macs": count_macs(model, (SIZE, SIZE))}
        if name in PUBLISHED:
            rows[name]["macs_520"] = count_macs(model, (520, 520))
        # in eval mode: the exporter puts the module back in the mode it found it in, the segmenter inside too
        path = export_module_onnx(Logits(model).eval(), work / f"{name.replace(' ', '_')}.onnx", cfg, ["logits"])
        assert not any(m.training for m in model.modules())
        session = onnx_session(path, threads=args.threads, spin=False)
        with torch.inference_mode():
            reference = model(image)["out"].numpy()
        onnx_out = session.run(None, {"input": batch})[0]
        rows[name]["ort_max_abs_error"] = float(np.abs(onnx_out - reference).max())
        rows[name]["ort_mask_agreement"] = float((onnx_out.argmax(1) == reference.argmax(1)).mean())

        def eager(model=model):
            with torch.inference_mode():
                return model(image)

        fns[f"{name}|eager"] = eager
        fns[f"{name}|ort"] = lambda session=session: session.run(None, {"input": batch})
    medians: dict[str, list[float]] = {key: [] for key in fns}
    for r in range(args.repeats):
        print(f"timing, repeat {r + 1}/{args.repeats} ...", flush=True)
        for key, ms in interleaved_medians(fns, args.warmup, args.runs).items():
            medians[key].append(ms)
    for key, values in medians.items():
        name, engine = key.split("|")
        rows[name][engine] = values
    return rows


def report(rows: dict[str, dict], args: argparse.Namespace) -> list[dict]:
    table = []
    arch_of_reference = {ref: arch for arch, ref in REFERENCE.items()}
    for name, row in rows.items():
        arch = arch_of_reference.get(name) or name.split(" ")[0]
        ref = rows[REFERENCE[arch]]
        entry = {"segmenter": name, "params_m": row["params"] / 1e6, "gmacs": row["macs"] / 1e9,
                 "ort_max_abs_error": row["ort_max_abs_error"], "ort_mask_agreement": row["ort_mask_agreement"]}
        for engine in ("eager", "ort"):
            entry[f"{engine}_ms"] = statistics.median(row[engine])
            ratios = np.asarray(row[engine]) / np.asarray(ref[engine])  # per repeat: same load for both
            entry[f"{engine}_ratio"] = float(np.median(ratios))
            entry[f"{engine}_ratio_range"] = (float(ratios.min()), float(ratios.max()))
        table.append(entry)
    print(f"\n{SIZE}x{SIZE} batch-1 latency, median ms ({args.repeats} repeats x {args.runs} interleaved runs, "
          f"{args.threads} threads); ratio = segmenter / its MobileNetV3 reference (min-max over repeats)")
    print("| segmenter | params (M) | GMACs | eager ms | ratio | ORT ms | ratio |")
    print("|---|---|---|---|---|---|---|")
    for e in table:
        cells = []
        for engine in ("eager", "ort"):
            lo, hi = e[f"{engine}_ratio_range"]
            cells += [f"{e[f'{engine}_ms']:.1f}", f"{e[f'{engine}_ratio']:.2f} ({lo:.2f}-{hi:.2f})"]
        print(f"| {e['segmenter']} | {e['params_m']:.2f} | {e['gmacs']:.2f} | " + " | ".join(cells) + " |")
    print("\nONNX Runtime vs eager on one 512x512 image: max |logit difference|, argmax-mask agreement")
    for e in table:
        print(f"  {e['segmenter']}: {e['ort_max_abs_error']:.2e}, {100 * e['ort_mask_agreement']:.3f}%")
    print("\ncounting check at 520 px (torchvision's published parameters / GFLOPS):")
    for name, (params, gflops) in PUBLISHED.items():
        if name in rows:
            print(f"  {name}: {rows[name]['params']:,} params ({params:,}), {rows[name]['macs_520'] / 1e9:.3f} "
                  f"GMACs ({gflops})")
    return table


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs", type=int, default=20, help="timed calls per segmenter and engine in each repeat")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--only", nargs="+", default=None, help="MNv4 row names to keep (default: all)")
    p.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    names = [row_name(a, b) for a, b in MNV4]
    if args.only:
        names = [n for n in names if n in args.only]
    names += [ref for arch, ref in REFERENCE.items() if any(n.startswith(arch + " ") for n in names)]
    with tempfile.TemporaryDirectory() as tmp:
        rows = time_all(names, args, Path(tmp))
    if args.json:  # the raw per-repeat medians first: nothing measured is lost if the report fails
        args.json.with_suffix(".raw.json").write_text(json.dumps(rows, indent=2))
    table = report(rows, args)
    if args.json:
        from mnv4.bench.environment import capture_environment

        args.json.write_text(json.dumps({"environment": capture_environment(args.threads), "runs": args.runs,
                                         "repeats": args.repeats, "rows": table}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
