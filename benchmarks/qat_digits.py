"""fp32 vs post-training int8 vs quantization-aware int8, on Conv-S trained on real data, in one run.

scikit-learn's handwritten digits (1,438 train / 359 val images, 10 classes, 32 px; tests/digits.py) are the
project's CPU-sized real data set. The run:

1. trains Conv-S in fp32 with ``mnv4.train`` (the settings of tests/test_train_e2e.py: ~97% top-1);
2. post-training int8 (PTQ), calibrated on 200 training images with the model's evaluation preprocessing: ONNX
   Runtime QDQ (u8 weights, the default; 7-bit s8, the fast one; 8-bit s8, to show the x86 saturation), LiteRT,
   ExecuTorch;
3. quantization-aware training (QAT, ``mnv4.export.qat.train_qat`` = ``mnv4 train --qat``): a short fine-tune of the
   fp32 weights with fake-quant, converted and exported to ExecuTorch and ONNX (u8, the default; 7-bit s8; 8-bit s8);
4. for every file: top-1 on the held-out images, top-1 agreement with fp32 and the logit SQNR (the int8 check of
   ``mnv4 export``), and a deliberately miscalibrated file (ranges from inputs 8x too small) as the failing case
   that the check's thresholds must catch.

    python benchmarks/qat_digits.py --out qat-digits          # ~15-30 min on 2 cores
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
from digits import write_digits_imagefolder  # noqa: E402

import mnv4  # noqa: E402

SIZE = (32, 32)


def fp32_config(data: Path, out: Path, epochs: float, threads: int):
    """tests/test_train_e2e.py's digits settings (measured there: 96.9% top-1 after 8 epochs)."""
    from mnv4.train import TrainConfig

    return TrainConfig(
        model="mobilenetv4_conv_small", data=str(data), out=str(out), image_size=SIZE[0], epochs=epochs,
        global_batch=32, lr=2e-3, warmup_epochs=1, weight_decay=0.05, label_smoothing=0.1, val_crop_pct=1.0,
        crop_scale_min=0.85, hflip=False, grad_clip=1.0, ema_decay=0.99, ema_start_epochs=epochs / 2, workers=0,
        threads=threads, progress=False, tensorboard=False, seed=0,
    )


def load_digits_model(weights: Path) -> mnv4.MobileNetV4:
    model = mnv4.create_model("mobilenetv4_conv_small", pretrained=weights, num_classes=10).eval()
    # the digits are 32 px already: evaluated whole (no centre crop), as they were validated in training
    model.pretrained_cfg = {**model.pretrained_cfg, "input_size": (3, *SIZE), "crop_pct": 1.0}
    return model


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=None, help="keep the runs and files here (default: a temp folder)")
    p.add_argument("--epochs", type=float, default=8, help="fp32 training epochs")
    p.add_argument("--qat-epochs", type=float, default=2, help="QAT fine-tuning epochs")
    p.add_argument("--qat-lr", type=float, default=2e-4, help="QAT peak learning rate (a tenth of fp32's)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: the machine may be shared)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # decaying weights make denormals, which slow CPU kernels many-fold
    warnings.simplefilter("ignore")
    with tempfile.TemporaryDirectory() as tmp:
        work = args.out or Path(tmp)
        rows = run(work, args)
    print_table(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


def run(work: Path, args) -> list[dict]:
    from mnv4.export.data import Preprocess, load_batch, scan_folder
    from mnv4.export.executorch import ExecuTorchRunner
    from mnv4.export.litert import LiteRTRunner
    from mnv4.export.onnx import export_onnx, onnx_session, run_session
    from mnv4.export.qat import export_qdq_onnx, train_qat
    from mnv4.export.quantize import (
        FAST_ORT_INT8,
        OrtQuantSettings,
        export_executorch_int8,
        export_litert_int8,
        quantize_onnx,
        torch_runner,
    )
    from mnv4.export.verify import judge_int8
    from mnv4.train import train

    data = write_digits_imagefolder(work / "digits", size=SIZE[0])
    print("1. fp32 training", flush=True)
    fp32_run = train(fp32_config(data, work / "fp32", args.epochs, args.threads))
    final = fp32_run.final
    use_ema = final.get("ema_top1", -1) > final.get("val_top1", -1)
    weights = work / "fp32" / ("model_ema.safetensors" if use_ema else "model.safetensors")
    model = load_digits_model(weights)
    preprocess = Preprocess.for_model(model, SIZE)
    val = scan_folder(data / "val")
    x_val = load_batch(val.paths, preprocess)
    y_val = np.asarray(val.labels)
    val_images = torch.from_numpy(x_val)
    rows: list[dict] = []

    def measure(name: str, run_file, kind: str) -> None:
        logits = np.concatenate([np.asarray(run_file(x[None])).reshape(1, -1) for x in x_val])
        top1 = float((logits.argmax(1) == y_val).mean())
        check = judge_int8(model, run_file, val_images, name, name) if kind != "fp32" else None
        rows.append({"file": name, "kind": kind, "top1": top1,
                     "agreement": check.agreement if check else 1.0, "sqnr_db": check.sqnr_db if check else None,
                     "check_ok": check.ok if check else None})
        extra = f", agreement {100 * check.agreement:.1f}%, SQNR {check.sqnr_db:.1f} dB" if check else ""
        print(f"   {name:34s} top-1 {100 * top1:.2f}%{extra}", flush=True)

    measure("PyTorch fp32", torch_runner(model), "fp32")
    print("2. post-training int8", flush=True)
    calib = data / "train"
    fp32_onnx = export_onnx(model, work / "fp32.onnx", input_size=SIZE)
    ptq = {
        "ORT PTQ (default, u8 weights)": ("ptq.onnx", OrtQuantSettings()),
        "ORT PTQ (7-bit s8 weights, fast)": ("ptq7.onnx", FAST_ORT_INT8),
        "ORT PTQ (8-bit s8 weights)": ("ptq8.onnx", OrtQuantSettings(weights="s8")),
    }
    for name, (filename, settings) in ptq.items():
        path = quantize_onnx(fp32_onnx, work / filename, calib, preprocess=preprocess, num_images=200,
                             settings=settings).path
        session = onnx_session(path)
        measure(name, lambda x, s=session: run_session(s, x)[0], "PTQ")
    bad_pre = dataclasses.replace(preprocess, std=tuple(8 * s for s in preprocess.std))
    bad = quantize_onnx(fp32_onnx, work / "miscalibrated.onnx", calib, preprocess=bad_pre, num_images=200).path
    bad_session = onnx_session(bad)
    measure("ORT PTQ miscalibrated (control)", lambda x: run_session(bad_session, x)[0], "control")
    lite = LiteRTRunner(export_litert_int8(model, work / "ptq.tflite", calib, input_size=SIZE, num_images=200).path)
    measure("LiteRT PTQ", lambda x: lite(x)[0], "PTQ")
    et = ExecuTorchRunner(export_executorch_int8(model, work / "ptq.pte", calib, input_size=SIZE,
                                                 num_images=200).path)
    measure("ExecuTorch PTQ", lambda x: et(x)[0], "PTQ")

    print("3. quantization-aware training", flush=True)
    qat_cfg = dataclasses.replace(fp32_config(data, work / "qat", args.qat_epochs, args.threads),
                                  pretrained=str(weights), lr=args.qat_lr, warmup_epochs=0, qat=True)
    qat = train_qat(qat_cfg)
    et_qat = ExecuTorchRunner(qat.files.executorch)
    measure("ExecuTorch QAT", lambda x: et_qat(x)[0], "QAT")
    s_qat = onnx_session(qat.files.onnx)
    measure("ORT QAT (default, u8 weights)", lambda x: run_session(s_qat, x)[0], "QAT")
    # the converted graph once more with ORT's other kernels: 7-bit s8 weights (the fast U8S8 ones), and the trained
    # 8-bit s8 weights as they are (what saturates on x86 without VNNI)
    for name, settings in (("7-bit s8 weights, FAST_ORT_INT8", FAST_ORT_INT8),
                           ("8-bit s8 weights", OrtQuantSettings(weights="s8"))):
        other = onnx_session(export_qdq_onnx(qat.converted, torch.zeros(1, 3, *SIZE), work / "qat_s8.onnx", settings))
        measure(f"ORT QAT ({name})", lambda x, s=other: run_session(s, x)[0], "QAT")
    return rows


def print_table(rows: list[dict]) -> None:
    fp32 = next(r["top1"] for r in rows if r["kind"] == "fp32")
    print("\n| file | top-1 | vs fp32 | top-1 agreement | logit SQNR | int8 check |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        sqnr = f"{r['sqnr_db']:.1f} dB" if r["sqnr_db"] is not None else "-"
        check = "-" if r["check_ok"] is None else ("pass" if r["check_ok"] else "FAIL")
        print(f"| {r['file']} | {100 * r['top1']:.2f}% | {100 * (r['top1'] - fp32):+.2f} | "
              f"{100 * r['agreement']:.1f}% | {sqnr} | {check} |")


if __name__ == "__main__":
    raise SystemExit(main())
