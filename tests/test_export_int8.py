"""int8 post-training quantization on a model trained on real data (scikit-learn's handwritten digits).

A session fixture trains Conv-S (10 classes, 32 px) for 14 epochs (~1-2 min on 2 cores, ~90% top-1) with a plain
loop, then the tests quantize it (ONNX Runtime QDQ, LiteRT PT2E) calibrating on training images and compare
top-1 on the held-out images with fp32: within 1 point.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from digits import write_digits_imagefolder  # tests/ is on sys.path (rootdir conftest)
from torch import nn

import mnv4
from mnv4.export.data import Preprocess, load_batch, scan_folder

SIZE = (32, 32)
pytestmark = pytest.mark.slow


def _train_digits(root, epochs: int = 14, seed: int = 0) -> mnv4.MobileNetV4:
    torch.manual_seed(seed)
    torch.set_flush_denormal(True)  # decaying weights make denormals, which slow CPU kernels many-fold
    model = mnv4.create_model("mobilenetv4_conv_small", num_classes=10)
    train = scan_folder(root / "train")
    x_all = torch.from_numpy(load_batch(train.paths, Preprocess(SIZE)))
    y_all = torch.tensor(train.labels)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    steps_per_epoch = (len(x_all) + 63) // 64
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 3e-3, total_steps=epochs * steps_per_epoch)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x_all), generator=gen)
        for i in range(0, len(order), 64):
            idx = order[i : i + 64]
            if len(idx) < 2:
                continue
            loss = nn.functional.cross_entropy(model(x_all[idx]), y_all[idx], label_smoothing=0.1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    # BN running stats re-estimated on the training set with the final weights (cumulative average).
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.reset_running_stats()
                m.momentum = None
        for i in range(0, len(x_all), 128):
            model(x_all[i : i + 128])
    return model.eval()


@pytest.fixture(scope="session")
def digits_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("digits")
    write_digits_imagefolder(root, size=SIZE[0])
    return _train_digits(root), root


def _top1_torch(model, folder) -> float:
    from mnv4.export.quantize import top1_accuracy, torch_runner

    return top1_accuracy(torch_runner(model), folder, Preprocess(SIZE), batch_size=64)[0]


def test_onnx_int8_within_one_point(digits_model, tmp_path):
    pytest.importorskip("onnxruntime", reason="needs the onnx extra")
    from mnv4.export.onnx import export_onnx, onnx_session, run_session
    from mnv4.export.quantize import quantize_onnx, top1_accuracy

    model, root = digits_model
    fp32 = export_onnx(model, tmp_path / "digits.onnx", input_size=SIZE)
    report = quantize_onnx(fp32, tmp_path / "digits.int8.onnx", root / "train", input_size=SIZE, num_images=200)
    assert report.num_images == 200

    acc_torch = _top1_torch(model, root / "val")
    assert acc_torch > 0.85, f"the digits model did not train ({acc_torch:.3f}); the int8 comparison would be void"
    s32, s8 = onnx_session(fp32), onnx_session(report.path)
    acc32 = top1_accuracy(lambda x: run_session(s32, x)[0], root / "val", Preprocess(SIZE), batch_size=32)[0]
    acc8 = top1_accuracy(lambda x: run_session(s8, x)[0], root / "val", Preprocess(SIZE), batch_size=32)[0]
    assert abs(acc32 - acc_torch) < 1e-9
    assert acc8 >= acc32 - 0.01, f"int8 top-1 {acc8:.4f} vs fp32 {acc32:.4f}"

    # it is really int8: QDQ around the convs with int8 per-channel weights, and about 4x smaller
    import onnx

    proto = onnx.load(report.path)
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("DequantizeLinear") > 40 and ops.count("QuantizeLinear") > 20
    assert os.path.getsize(report.path) < 0.35 * os.path.getsize(fp32)


def test_litert_int8_within_one_point(digits_model, tmp_path):
    pytest.importorskip("litert_torch", reason="needs the tflite extra")
    pytest.importorskip("ai_edge_litert", reason="needs the tflite extra")
    from mnv4.export.litert import LiteRTRunner, op_counts
    from mnv4.export.quantize import export_litert_int8, top1_accuracy

    model, root = digits_model
    report = export_litert_int8(model, tmp_path / "digits.int8.tflite", root / "train", input_size=SIZE,
                                num_images=200, preprocess=Preprocess(SIZE))
    runner = LiteRTRunner(report.path)
    acc8 = top1_accuracy(lambda x: runner(x)[0], root / "val", Preprocess(SIZE))[0]
    acc32 = _top1_torch(model, root / "val")
    assert acc8 >= acc32 - 0.01, f"LiteRT int8 top-1 {acc8:.4f} vs fp32 {acc32:.4f}"
    assert runner.input["dtype"] == np.int8
    assert op_counts(report.path).get("CONV_2D", 0) > 10
