"""`mnv4 train --qat`: the flag reaches ``mnv4.export.qat.train_qat`` with the run's settings. The QAT flow itself is
tested on the trained digits model in test_export_int8.py; the accuracy it buys is measured by
benchmarks/qat_digits.py."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from mnv4.cli import main


def test_cli_train_qat_needs_fp32_weights(tmp_path, capsys):
    code = main(["train", "--qat", "--data", str(tmp_path), "--out", str(tmp_path / "q"), "--workers", "0"])
    err = capsys.readouterr().err
    assert code == 2 and "--qat fine-tunes trained fp32 weights" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "q").exists()


def test_cli_train_qat_runs_train_qat(tmp_path, monkeypatch, capsys):
    import mnv4.export.qat as qat

    seen = []

    def fake_train_qat(cfg):
        seen.append(cfg)
        files = qat.QATFiles(tmp_path / "model_int8.pte", tmp_path / "model_int8.onnx")
        run = SimpleNamespace(final={"val_top1": 97.0}, global_step=3, weights=tmp_path / "model.safetensors")
        return qat.QATResult(run, files, converted=None, float_weights=tmp_path / "model_qat_fp32.safetensors")

    monkeypatch.setattr(qat, "train_qat", fake_train_qat)
    code = main(["train", "--qat", "--pretrained", "fp32.safetensors", "--data", str(tmp_path), "--lr", "1e-4",
                 "--out", str(tmp_path / "q")])
    out = capsys.readouterr().out
    assert code == 0
    assert len(seen) == 1 and seen[0].qat and seen[0].pretrained == "fp32.safetensors" and seen[0].lr == 1e-4
    assert f"{tmp_path / 'model_int8.pte'}" in out and "done: 3 steps" in out
    assert Path(seen[0].out) == tmp_path / "q"
