"""LiteRT (TFLite) export through litert-torch, run in the ai-edge-litert interpreter: Conv-S and Hybrid-M."""

from __future__ import annotations

import os

import pytest
import torch

import mnv4
from mnv4.testing import make_nondegenerate

pytest.importorskip("litert_torch", reason="needs the tflite extra: pip install 'mnv4[tflite]'")
pytest.importorskip("ai_edge_litert", reason="needs the tflite extra: pip install 'mnv4[tflite]'")

from mnv4.export.litert import export_litert, op_counts, verify_litert  # noqa: E402

SIZE = (64, 96)
pytestmark = pytest.mark.slow  # litert-torch conversion takes 10-30 s per model


@pytest.fixture(scope="module", params=["mobilenetv4_conv_small", "mobilenetv4_hybrid_medium"])
def exported(request, tmp_path_factory):
    torch.manual_seed(0)
    model = make_nondegenerate(mnv4.create_model(request.param), seed=1, input_size=(64, 64), batch_size=2)
    path = export_litert(model, tmp_path_factory.mktemp("litert") / f"{request.param}.tflite", input_size=SIZE)
    return request.param, model, path


def test_litert_fp32_matches_torch(exported):
    name, model, path = exported
    check = verify_litert(model, path)
    assert check.ok and check.max_rel_error < 1e-4, check.summary()
    ops = op_counts(path)
    assert ops.get("CONV_2D", 0) + ops.get("DEPTHWISE_CONV_2D", 0) > 30
    if "hybrid" in name:
        # Mobile MQA kept as attention ops: 8 softmaxes, its two matmuls per block lowered to FULLY_CONNECTED
        assert ops.get("SOFTMAX", 0) == 8 and ops.get("FULLY_CONNECTED", 0) >= 2 * 8


def test_litert_fp16_weights(exported, tmp_path):
    name, model, path = exported
    fp16 = export_litert(model, tmp_path / f"{name}.fp16.tflite", input_size=SIZE, fp16=True)
    check = verify_litert(model, fp16, fp16=True)
    assert check.ok, check.summary()
    assert check.max_rel_error > 0  # really a different (rounded) model
    assert os.path.getsize(fp16) < 0.6 * os.path.getsize(path)


def test_cli_export_tflite(tmp_path, capsys):
    from mnv4.cli import main

    out = tmp_path / "cs.tflite"
    args = ["export", "mobilenetv4_conv_small", "--format", "tflite", "--size", "64", "64", "--random-weights",
            "--out", str(out)]
    assert main(args) == 0
    assert "LiteRT check OK" in capsys.readouterr().out
