"""ExecuTorch export (.pte, XNNPACK delegate) checked in ExecuTorch's Python runtime: the CLI on Conv-S, the library
on Hybrid-M (the Mobile MQA), and that every op lands in one XNNPACK subgraph. int8 on trained weights is in
test_export_int8.py."""

from __future__ import annotations

import pytest
import torch

import mnv4
from mnv4.testing import make_nondegenerate

pytest.importorskip("executorch", reason="needs the executorch extra: pip install 'mnv4[executorch]'")

from mnv4.export.executorch import ExecuTorchRunner, delegated_ops, export_executorch, verify_executorch  # noqa: E402

SIZE = (64, 96)  # small and non-square


def test_cli_export_executorch_fp32(tmp_path, capsys):
    from mnv4.cli import main

    out = tmp_path / "cs.pte"
    code = main(["export", "mobilenetv4_conv_small", "--format", "executorch", "--random-weights",
                 "--size", *map(str, SIZE), "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "ExecuTorch check OK" in captured.out and f"wrote {out}" in captured.out
    assert "latency and structure work only" in captured.out  # --random-weights says what the file is for
    assert delegated_ops(out) == {"XnnpackBackend": 1}
    runner = ExecuTorchRunner(out)
    assert runner.input_shape == (1, 3, *SIZE)
    (logits,) = runner(torch.randn(2, 3, *SIZE).numpy())  # a batch runs image by image
    assert logits.shape == (2, 1000)
    assert [p.name for p in tmp_path.iterdir()] == ["cs.pte"]  # no temporary file left next to it


@pytest.mark.slow
def test_executorch_hybrid_fully_delegated(tmp_path):
    torch.manual_seed(0)
    model = make_nondegenerate(mnv4.create_model("mobilenetv4_hybrid_medium"), seed=1, input_size=(64, 64),
                               batch_size=2, passes=1)
    path = export_executorch(model, tmp_path / "hm.pte", input_size=SIZE)
    check = verify_executorch(model, path)
    assert check.ok and check.max_rel_error < 5e-4, check.summary()
    # the MQA's batched matmuls included: no expand/unsqueeze copies left outside the delegate
    assert delegated_ops(path) == {"XnnpackBackend": 1}


def test_executorch_rejects_features_only(tmp_path):
    from mnv4.errors import UserError

    model = mnv4.create_model("mobilenetv4_conv_small", features_only=True)
    with pytest.raises(UserError, match="classifier"):
        export_executorch(model, tmp_path / "f.pte", input_size=SIZE)
