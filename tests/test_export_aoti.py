"""AOTInductor export (.pt2 package, CPU, freezing): compiled, loaded back and checked against PyTorch via the CLI."""

from __future__ import annotations

import pytest
import torch

from mnv4.export.aoti import AOTIRunner, compiler_missing

pytestmark = pytest.mark.slow  # AOTInductor compiles C++: about a minute for Conv-S


@pytest.mark.skipif(compiler_missing() is not None, reason="AOTInductor needs a C++ compiler")
def test_cli_export_aoti(tmp_path, capsys):
    from mnv4.cli import main

    out = tmp_path / "cs.pt2"
    code = main(["export", "mobilenetv4_conv_small", "--format", "aoti", "--random-weights", "--size", "64", "64",
                 "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "AOTInductor check OK" in captured.out
    runner = AOTIRunner(out)
    (logits,) = runner(torch.randn(3, 3, 64, 64).numpy())
    assert logits.shape == (3, 1000)
    assert [p.name for p in tmp_path.iterdir()] == ["cs.pt2"]
