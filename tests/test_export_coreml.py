"""Core ML (ML Program) export of Conv-S and Hybrid-M: structure on every OS, predictions on macOS."""

from __future__ import annotations

import pytest
import torch

import mnv4

pytest.importorskip("coremltools", reason="needs the coreml extra: pip install 'mnv4[coreml]'")

from mnv4.export.coreml import can_run_coreml, export_coreml, inspect_coreml, verify_coreml  # noqa: E402

SIZE = (64, 96)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mobilenetv4_conv_small", "mobilenetv4_hybrid_medium"])
@pytest.mark.parametrize("fp16", [True, False])
def test_coreml_export(name, fp16, tmp_path):
    torch.manual_seed(0)
    model = mnv4.create_model(name, num_classes=10)
    path = export_coreml(model, tmp_path / f"{name}.mlpackage", input_size=SIZE, fp16=fp16)
    summary = inspect_coreml(path)
    assert summary.inputs == {"input": [1, 3, *SIZE]}
    assert summary.outputs == ["logits"]
    assert summary.unknown_ops == []
    ops = summary.op_counts
    assert "batch_norm" not in ops  # folded
    n_convs = sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    assert ops["conv"] == n_convs  # every conv survives as a conv (BN folded into it), none decomposed
    if "hybrid" in name:
        assert ops["matmul"] >= 2 * 8 and ops["softmax"] == 8  # 8 Mobile MQA blocks in Hybrid-M
    assert set(summary.weight_dtypes) == {"FLOAT16" if fp16 else "FLOAT32"}
    if can_run_coreml():
        assert verify_coreml(model, path, fp16=fp16).ok
    else:
        with pytest.raises(RuntimeError, match="macOS"):
            verify_coreml(model, path, fp16=fp16)


def test_coreml_rejects_bad_path(tmp_path):
    with pytest.raises(ValueError, match=".mlpackage"):
        export_coreml(mnv4.create_model("mobilenetv4_conv_small"), tmp_path / "m.mlmodel")
