"""Batch-1 CPU latency of the MobileNetV4 detectors next to MobileNetV3 ones, in PyTorch eager and ONNX Runtime.

Detectors (91 COCO classes, the whole model: resize/normalise, network, box decoding, top-k, NMS):

- the paper's RetinaNet (depthwise-separable FPN + head, P3-P7, 384 px) on MNv4 Conv-S, Conv-M, Hybrid-M, and the
  same RetinaNet (``mnv4.detection.retinanet_on``) on torchvision's MobileNetV3-Large: the reference;
- SSDLite at 320 px on MNv4 Conv-S and Conv-M, and torchvision's ``ssdlite320_mobilenet_v3_large``: the reference.

Weights are random but "trained-like" (``mnv4.testing.make_nondegenerate``: real BN statistics, no float denormals,
which would slow CPU kernels several-fold), and every detector uses score threshold 0.05, so untrained heads leave
few candidates and the numbers measure the networks; a trained detector adds some post-processing (NMS over its
candidates) on top. Each timed call goes round-robin over all detectors and engines (``interleaved_medians`` from
deploy_latency.py), ``--repeats`` times; the table gives the median of the repeats' medians, and each MNv4 detector's
ratio to its MobileNetV3 reference with the min-max over repeats (the spread load on a shared machine causes).

    python benchmarks/detect_latency.py --threads 1 --runs 20 --repeats 3 --json detect_latency.json
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
from mnv4.detection import DetectorSpec, create_detector, export_detector_onnx, fpn_on, retinanet_on
from mnv4.testing import make_nondegenerate

NUM_CLASSES = 91
SCORE_THRESH = 0.05
MNV4 = [
    ("retinanet", "mobilenetv4_conv_small"),
    ("retinanet", "mobilenetv4_conv_medium"),
    ("retinanet", "mobilenetv4_hybrid_medium"),
    ("ssdlite", "mobilenetv4_conv_small"),
    ("ssdlite", "mobilenetv4_conv_medium"),
]
REFERENCE = {"retinanet": "retinanet mobilenet_v3_large", "ssdlite": "ssdlite320_mobilenet_v3_large"}


def mobilenet_v3_retinanet() -> torch.nn.Module:
    """The paper's RetinaNet built exactly as for MNv4, on torchvision's MobileNetV3-Large: its /8, /16 and /32
    stage outputs (40, 112, 960 channels) through torchvision's ``create_feature_extractor``."""
    from torchvision.models import mobilenet_v3_large
    from torchvision.models.feature_extraction import create_feature_extractor

    features = mobilenet_v3_large().features
    body = create_feature_extractor(features, return_nodes={"6": "0", "12": "1", "16": "2"})
    backbone = fpn_on(body, [40, 112, 960], 256, "p6p7", separable=True)
    return retinanet_on(backbone, NUM_CLASSES, 384, separable=True, score_thresh=SCORE_THRESH)


def build(name: str) -> tuple[torch.nn.Module, int]:
    """(detector in eval mode with trained-like BN statistics, input size) for a row name."""
    torch.manual_seed(0)
    if name == REFERENCE["ssdlite"]:
        from torchvision.models.detection import ssdlite320_mobilenet_v3_large

        model, size = ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None,
                                                     score_thresh=SCORE_THRESH), 320
    elif name == REFERENCE["retinanet"]:
        model, size = mobilenet_v3_retinanet(), 384
    else:
        arch, backbone = name.split(" ")
        spec = DetectorSpec(arch, backbone, NUM_CLASSES)
        model, size = create_detector(spec, score_thresh=SCORE_THRESH), spec.size
    # BN statistics from a few train-mode passes of the whole detector's network (backbone, FPN/extras and head)
    make_nondegenerate(DetectorNetwork(model), input_size=(size, size), batch_size=2, passes=1)
    return model.eval(), size


class DetectorNetwork(torch.nn.Module):
    """backbone -> head of a torchvision detector, for calibrating BatchNorm statistics in train mode."""

    def __init__(self, detector: torch.nn.Module):
        super().__init__()
        self.backbone, self.head = detector.backbone, detector.head

    def forward(self, x: torch.Tensor):
        return self.head(list(self.backbone(x).values()))


def time_all(names: list[str], args: argparse.Namespace, work: Path) -> dict[str, dict]:
    from mnv4.export.onnx import onnx_session

    rows: dict[str, dict] = {}
    fns = {}
    for name in names:
        print(f"building and exporting {name} ...", flush=True)
        model, size = build(name)
        image = torch.rand(3, size, size, generator=torch.Generator().manual_seed(1))
        rows[name] = {"size": size, "params": count_params(model), "macs": count_macs(model, (size, size))}
        path = export_detector_onnx(model, work / f"{name.replace(' ', '_')}.onnx", size)
        session = onnx_session(path, threads=args.threads, spin=False)
        batch = image[None].numpy()

        def eager(model=model, image=image):
            with torch.inference_mode():
                return model([image])

        fns[f"{name}|eager"] = eager
        fns[f"{name}|ort"] = lambda session=session, batch=batch: session.run(None, {"image": batch})
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
        entry = {"detector": name, "size": row["size"], "params_m": row["params"] / 1e6, "gmacs": row["macs"] / 1e9}
        for engine in ("eager", "ort"):
            entry[f"{engine}_ms"] = statistics.median(row[engine])
            ratios = np.asarray(row[engine]) / np.asarray(ref[engine])  # per repeat: same load for both
            entry[f"{engine}_ratio"] = float(np.median(ratios))
            entry[f"{engine}_ratio_range"] = (float(ratios.min()), float(ratios.max()))
        table.append(entry)
    print(f"\nbatch-1 latency, median ms ({args.repeats} repeats x {args.runs} interleaved runs, {args.threads} "
          f"threads); ratio = detector / its MobileNetV3 reference (min-max over repeats)")
    print("| detector | input | params (M) | GMACs | eager ms | ratio | ORT ms | ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for e in table:
        cells = []
        for engine in ("eager", "ort"):
            lo, hi = e[f"{engine}_ratio_range"]
            cells += [f"{e[f'{engine}_ms']:.1f}", f"{e[f'{engine}_ratio']:.2f} ({lo:.2f}-{hi:.2f})"]
        print(f"| {e['detector']} | {e['size']} | {e['params_m']:.2f} | {e['gmacs']:.2f} | " + " | ".join(cells) + " |")
    return table


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs", type=int, default=20, help="timed calls per detector and engine in each repeat")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--only", nargs="+", default=None, help="row names to keep (default: all)")
    p.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    names = [f"{a} {b}" for a, b in MNV4] + list(REFERENCE.values())
    if args.only:
        names = [n for n in names if n in args.only or n in REFERENCE.values()]
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

