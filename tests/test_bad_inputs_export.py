"""Bad input to `mnv4 export` and `mnv4 bench`, through the CLI: one clear line (no traceback), the exit code, nothing
left half-written or overwritten, and the good part of the command still done."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import mnv4
from mnv4.cli import main
from mnv4.testing import make_nondegenerate

pytest.importorskip("onnxruntime", reason="needs the onnx extra: pip install 'mnv4[onnx]'")

SIZE = ("64", "64")


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = make_nondegenerate(mnv4.create_model("mobilenetv4_conv_small"), input_size=(64, 64), batch_size=2)
    path = tmp_path_factory.mktemp("weights") / "cs.safetensors"
    save_file(model.state_dict(), str(path))
    return path


def _export(out: Path, *extra: str) -> list[str]:
    return ["export", "mobilenetv4_conv_small", "--format", "onnx", "--size", *SIZE, "--out", str(out), *extra]


def _one_line_error(err: str, *fragments: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mnv4 "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, err)


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _images(folder: Path, count: int) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize((64, 64)).save(folder / f"{i}.png")
    return folder


def test_tolerance_zero_is_applied_and_nothing_is_overwritten(tmp_path, weights, capsys):
    """`--tolerance 0` used to run with 1e-3 (falsy zero). A file that fails its check is not written: an older file
    at --out stays as it was, and no temporary file is left."""
    out = tmp_path / "cs.onnx"
    out.write_bytes(b"previous export")
    assert main(_export(out, "--weights", str(weights), "--tolerance", "0")) == 1
    captured = capsys.readouterr()
    assert "ONNX check FAILED" in captured.out and "tolerance 0e+00" in captured.out
    assert f"nothing was written to {out}" in captured.err and "Traceback" not in captured.err
    assert out.read_bytes() == b"previous export"
    assert _listing(tmp_path) == ["cs.onnx"]
    # the same export with the default tolerance passes and replaces the old file
    assert main(_export(out, "--weights", str(weights))) == 0
    assert "tolerance 1e-03" in capsys.readouterr().out
    assert out.read_bytes()[:8] != b"previous" and _listing(tmp_path) == ["cs.onnx"]


def test_out_is_an_existing_folder(tmp_path, weights, capsys):
    out = tmp_path / "x.onnx"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(_export(out, "--weights", str(weights))) == 2
    _one_line_error(capsys.readouterr().err, "exists and is a folder")
    assert _listing(out) == ["keep.txt"]


def test_out_under_a_file(tmp_path, weights, capsys):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder")
    assert main(_export(blocker / "sub" / "m.onnx", "--weights", str(weights))) == 2
    _one_line_error(capsys.readouterr().err, "is a file, not a folder")
    assert blocker.read_text() == "a file, not a folder"


def test_out_in_an_unwritable_folder(tmp_path, weights, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if os.access(locked, os.W_OK):  # root ignores permission bits; sysfs refuses new files even to root
        if not sys.platform.startswith("linux"):
            pytest.skip("no folder this user cannot write to")
        locked = Path("/sys")
    assert main(_export(locked / "m.onnx", "--weights", str(weights))) == 2
    _one_line_error(capsys.readouterr().err, "cannot write in")
    assert not (locked / "m.onnx").exists()


def test_missing_weights_offline_names_the_choices(tmp_path, monkeypatch, capsys):
    """No --weights means the tag's released weights; offline with an empty cache that is one line that also names
    --random-weights."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    assert main(_export(tmp_path / "m.onnx")) == 2
    _one_line_error(capsys.readouterr().err, "not in the hub cache", "--random-weights")
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--int8", "--calib", "CALIB", "--min-agreement", "1.5"], "--min-agreement must be in [0, 1]"),
        (["--int8", "--calib", "CALIB", "--tolerance", "0.1"], "--tolerance is for fp32/fp16"),
        (["--min-sqnr", "20"], "judge int8 files"),
        (["--dynamic-hw", "--format", "executorch"], "--dynamic-hw is for --format onnx"),
        (["--calib", "CALIB"], "--calib only applies with --int8"),
    ],
)
def test_flag_combinations(tmp_path, weights, capsys, extra, message):
    calib = _images(tmp_path / "calib", 2)
    extra = [str(calib) if e == "CALIB" else e for e in extra]
    argv = _export(tmp_path / "m.onnx", "--weights", str(weights), *extra)
    if "--format" in extra:  # a later --format wins; give the matching suffix
        argv[argv.index("--out") + 1] = str(tmp_path / "m.pte")
    assert main(argv) == 2
    _one_line_error(capsys.readouterr().err, message)
    assert _listing(tmp_path) == ["calib"]


def test_int8_with_a_corrupt_calibration_image(tmp_path, capsys):
    """A corrupt image among the calibration images: no traceback and no leftovers (no fp32 intermediate, no
    temporary file). Either the image is skipped and reported and the export goes on with the others, or the
    command stops with one line naming it."""
    calib = _images(tmp_path / "calib", 6)
    (calib / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a PNG")
    out = tmp_path / "out" / "q.onnx"
    code = main(_export(out, "--random-weights", "--int8", "--calib", str(calib), "--calib-images", "7"))
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    assert code in (0, 2), captured.err
    if code == 2:
        _one_line_error(captured.err, "broken.png")
        assert not out.parent.exists() or _listing(out.parent) == []
    else:
        assert "broken.png" in captured.out + captured.err  # reported as skipped
        assert _listing(out.parent) == ["q.onnx"]
    assert _listing(calib) == sorted([*(f"{i}.png" for i in range(6)), "broken.png"])


def test_bench_goes_on_when_a_backend_fails_to_import(tmp_path, monkeypatch, capsys):
    """An onnxruntime whose import raises OSError (a broken shared library): that backend is reported as not run,
    with the reason, and the others are measured."""
    import importlib

    import mnv4.bench.backends as backends

    real_import = importlib.import_module

    def broken(name, *args, **kwargs):
        if name.split(".")[0] == "onnxruntime":
            raise OSError("libonnxruntime.so.1: cannot open shared object file")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(backends.importlib, "import_module", broken)
    out = tmp_path / "bench"
    code = main(["bench", "--quick", "--models", "mobilenetv4_conv_small", "--backends", "eager,onnxruntime",
                 "--threads", "1", "--no-plot", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "backend onnxruntime: not run -- onnxruntime fails to import (OSError: libonnxruntime.so.1" in captured.out
    row = next(line for line in captured.out.splitlines() if line.startswith("MNv4-Conv-S"))
    assert "failed" not in row and len(row.split()) == 6  # label, res, params, MACs, top-1, eager
    assert (out / "bench.csv").is_file()


def test_bench_marks_a_model_that_cannot_be_built_failed_and_measures_the_others(tmp_path, monkeypatch, capsys):
    """A spec file whose forward pass would need ~150 GiB, between two good models, named by a relative path (its
    cells' scratch folders used to be named after it): its cells fail with the size it would need; the good models
    before and after it are measured and written (the run used to stop at it, losing the first model's numbers)."""
    import json

    from mnv4.specs import CONV_SMALL, spec_to_dict

    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "huge.json").write_text(json.dumps({**spec_to_dict(CONV_SMALL), "name": "huge", "resolution": 60000}))
    (specs / "mine.json").write_text(json.dumps({**spec_to_dict(CONV_SMALL), "name": "mine"}))
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "bench"
    code = main(["bench", "--quick", "--models", "mobilenetv4_conv_small,specs/huge.json,specs/mine.json",
                 "--backends", "eager", "--threads", "1", "--resolution", "32", "--no-plot", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    rows = {line.split()[0]: line.split() for line in captured.out.splitlines()
            if line.split() and line.split()[0] in ("MNv4-Conv-S", "huge", "mine")}
    assert rows["huge"][2:4] == ["-", "-"] and rows["huge"][-1] == "failed"
    assert float(rows["MNv4-Conv-S"][-1]) > 0 and float(rows["mine"][-1]) > 0
    assert "failed: huge on eager: not built: huge would need" in captured.out and "GiB" in captured.out
    records = json.loads((out / "bench.json").read_text())["results"]
    assert [(r["label"], r["status"]) for r in records] == [("MNv4-Conv-S", "ok"), ("huge", "failed"), ("mine", "ok")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench", "specs"]  # no scratch folder beside the specs
