"""Issue 9's headline check: the same weights on the same folder report the same top-1 in every path -- the training
run's validation, ``mnv4 eval`` and the PyTorch column of ``mnv4 export --eval``. They once differed (three
preprocessing paths: bicubic crop, bilinear crop, plain bilinear resize), each number plausible on its own."""

from __future__ import annotations

import json
import re

import pytest
from digits import small_config

from mnv4.cli import main as cli_main
from mnv4.train import train


def test_training_validation_eval_and_export_eval_agree(tiny_digits, tmp_path, capsys):
    pytest.importorskip("onnxruntime", reason="export --eval runs the ONNX file (onnx extra)")
    # val_crop_pct None: validation follows the model's data config (Conv-S: bicubic, crop 0.875), as eval does
    result = train(small_config(tiny_digits, tmp_path / "run", epochs=1, val_crop_pct=None, ema_decay=None))
    val, weights = tiny_digits / "val", str(result.weights)
    trained_top1 = result.final["val_top1"]
    capsys.readouterr()

    report = tmp_path / "eval.json"
    assert cli_main(["eval", "--model", "mobilenetv4_conv_small", "--weights", weights, "--data", str(val),
                     "--img-size", "32", "--workers", "0", "--no-progress", "--out", str(report)]) == 0
    evaluated = json.loads(report.read_text())
    assert evaluated["images"] == 50 and evaluated["img_size"] == 32 and evaluated["crop_pct"] == 0.875

    capsys.readouterr()
    assert cli_main(["export", "mobilenetv4_conv_small", "--weights", weights, "--format", "onnx", "--size", "32",
                     "32", "--eval", str(val), "--out", str(tmp_path / "digits.onnx")]) == 0
    out = capsys.readouterr().out
    exported = re.search(r"PyTorch fp32\s.*?top-1\s+([\d.]+)% \((\d+) images\)", out)
    assert exported is not None, out
    assert int(exported.group(2)) == 50

    # the same 50 images and predictions in all three: top-1 is a multiple of 2%, printed to 2 decimals
    assert trained_top1 == pytest.approx(evaluated["top1"], abs=1e-9)
    assert float(exported.group(1)) == pytest.approx(evaluated["top1"], abs=0.006)
    assert 10.0 < evaluated["top1"] < 100.0  # a partly trained model: agreement on 0% or 100% would prove little
