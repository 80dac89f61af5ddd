"""The export pipeline over its format registry: a new format is one ``ExportFormat`` class plus one registry entry
(a TorchScript format defined here goes through ``run_export`` untouched), the check is the model kind's (a failing
one writes nothing and keeps the old file), files are staged under ``temp_path`` names and a killed export's staging
folder is removed by the next export; ``--format`` from the ``--out`` suffix; ``--ort-int8-weights``; and the exact
s8 -> u8 shift of QAT's ONNX files."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import mnv4
from mnv4.engine.outputs import temp_path
from mnv4.errors import UserError
from mnv4.export.format import ExportFormat
from mnv4.export.kind import Classifier
from mnv4.export.pipeline import ExportConfig, run_export
from mnv4.export.registry import FORMATS, export_format
from mnv4.testing import make_nondegenerate

SIZE = (32, 32)


class TorchScriptFormat(ExportFormat):
    """A format as a new module would add it: ``torch.jit.trace`` to ``.ts``, run with ``torch.jit.load``."""

    name, label, suffix = "torchscript", "TorchScript", ".ts"

    def write(self, exportable, path, cfg, calibration, work):
        with torch.no_grad():
            torch.jit.trace(exportable.module, exportable.sample).save(str(path))
        return "traced"

    def runner(self, path):
        module = torch.jit.load(str(path))
        return lambda x: [module(torch.from_numpy(x)).detach().numpy()]


@pytest.fixture
def torchscript(monkeypatch):
    monkeypatch.setitem(FORMATS, TorchScriptFormat.name, TorchScriptFormat())


@pytest.fixture(scope="module")
def model() -> mnv4.MobileNetV4:
    torch.manual_seed(0)
    return make_nondegenerate(mnv4.create_model("mobilenetv4_conv_small", num_classes=10), input_size=SIZE,
                              batch_size=2, passes=1).eval()


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_every_format_is_one_registry_entry():
    assert len({f.suffix for f in FORMATS.values()}) == len(FORMATS)
    for name, fmt in FORMATS.items():
        assert fmt.name == name and fmt.suffix.startswith(".") and fmt.default_precision in fmt.precisions
        assert export_format(None, f"m{fmt.suffix}") is fmt and export_format(name, None) is fmt
    with pytest.raises(UserError, match=r"cannot tell the format from its suffix; end it in one of \.onnx"):
        export_format(None, "model.bin")
    with pytest.raises(UserError, match="unknown format 'tensorrt'"):
        export_format("tensorrt", "m.onnx")


def test_a_new_format_runs_through_the_pipeline(torchscript, model, tmp_path):
    """Registered, the format is found by its suffix, written, checked by the classifier's comparison and moved into
    place; the pipeline did not change for it."""
    out = tmp_path / "cs.ts"
    result = run_export(model, ExportConfig(format=None, out=out, input_size=SIZE))
    assert result.ok and result.path == out and result.notes == ["traced"]
    assert result.check.format == "TorchScript" and result.check.ok and result.check.max_rel_error < 1e-4  # BN folded
    assert [s[0] for s in result.check.input_shapes] == [1, 1]  # a fixed-batch format is checked image by image
    assert _listing(tmp_path) == ["cs.ts"]
    logits = torch.jit.load(str(out))(torch.randn(3, 3, *SIZE))
    assert logits.shape == (3, 10)


class ShiftedLogits(Classifier):
    """A classifier whose comparison sees the file's logits 1% too large, ten times the fp32 tolerance (a comparison
    can be a plain function)."""

    def comparison(self, model, fmt, size, cfg):
        compare = super().comparison(model, fmt, size, cfg)
        return lambda model, run, fmt, path: compare(model, lambda x: [1.01 * run(x)[0]], fmt, path)


def test_a_failing_check_writes_nothing_and_keeps_the_old_file(torchscript, model, tmp_path):
    out = tmp_path / "cs.ts"
    out.write_bytes(b"the good file from before")
    result = run_export(model, ExportConfig(format="torchscript", out=out, input_size=SIZE), ShiftedLogits())
    assert not result.ok and result.path is None and not result.check.ok
    assert out.read_bytes() == b"the good file from before"
    assert _listing(tmp_path) == ["cs.ts"]  # no staging folder, no partial file


def test_a_failing_write_leaves_nothing(monkeypatch, torchscript, model, tmp_path):
    def broken(self, exportable, path, cfg, calibration, work):
        path.write_bytes(b"half a file")
        (work / "intermediate.onnx").write_bytes(b"scratch")
        raise RuntimeError("the exporter crashed")

    monkeypatch.setattr(TorchScriptFormat, "write", broken)
    with pytest.raises(RuntimeError, match="crashed"):
        run_export(model, ExportConfig(format="torchscript", out=tmp_path / "new" / "cs.ts", input_size=SIZE))
    assert _listing(tmp_path / "new") == []


class FolderFormat(TorchScriptFormat):
    """A format whose file is a folder, like Core ML's .mlpackage."""

    name, suffix, folder = "torchscript-folder", ".tsdir", True

    def write(self, exportable, path, cfg, calibration, work):
        path.mkdir()
        return super().write(exportable, path / "model.ts", cfg, calibration, work)

    def runner(self, path):
        return super().runner(path / "model.ts")


def test_a_folder_format_replaces_the_old_folder(monkeypatch, model, tmp_path):
    """An old folder is replaced whole, and only once the new one passed its check."""
    monkeypatch.setitem(FORMATS, FolderFormat.name, FolderFormat())
    out = tmp_path / "cs.tsdir"
    out.mkdir()
    (out / "old.txt").write_text("old")
    assert not run_export(model, ExportConfig(format=None, out=out, input_size=SIZE), ShiftedLogits()).ok
    assert _listing(out) == ["old.txt"] and _listing(tmp_path) == ["cs.tsdir"]
    assert run_export(model, ExportConfig(format=None, out=out, input_size=SIZE)).ok
    assert _listing(out) == ["model.ts"] and _listing(tmp_path) == ["cs.tsdir"]


def test_staging_folders_of_killed_exports_are_removed_at_the_next_start(monkeypatch, torchscript, model, tmp_path):
    """`mnv4 export` killed (SIGKILL) while it writes leaves its staging folder next to --out; the next export into
    that folder removes it. A live process's staging folder is left alone."""
    out = tmp_path / "cs.onnx"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(mnv4.__file__).parents[1]),
                                                         os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "mnv4", "export", "mobilenetv4_conv_small", "--random-weights",
                             "--size", "64", "64", "--out", str(out)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not [p for p in tmp_path.iterdir() if p.is_dir()]:  # its staging folder
            assert proc.poll() is None, "the export ended before it staged anything"
            assert time.monotonic() < deadline, "no staging folder appeared"
            time.sleep(0.01)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    (stale,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert str(proc.pid) in stale.name and not out.exists()
    with monkeypatch.context() as patch:  # the staging folder of another export, running now (our parent process)
        patch.setattr(os, "getpid", os.getppid)
        live = temp_path(tmp_path / "other.onnx")
    live.mkdir()

    result = run_export(model, ExportConfig(format=None, out=tmp_path / "next.ts", input_size=SIZE))
    assert result.ok and f"removed {stale}, left by a killed run" in result.notes
    assert _listing(tmp_path) == sorted([live.name, "next.ts"])


# -------------------------------------------------------------------------------------------- flags, checked early


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--ort-int8-weights", "s8-7bit"], "--ort-int8-weights applies with --int8"),
        (["--format", "tflite", "--out", "m.tflite", "--int8", "--calib", "CALIB", "--ort-int8-weights", "u8"],
         "--ort-int8-weights is for --format onnx"),
        (["--out", "m.bin"], "cannot tell the format from its suffix"),
        (["--fp32", "--out", "m.pte"], "--fp32 only applies to --format coreml"),
        (["--format", "onnx", "--out", "m.pte"], "--out for --format onnx must end in .onnx"),
    ],
)
def test_cli_format_flags_one_line(tmp_path, capsys, extra, message):
    from mnv4.cli import main

    (tmp_path / "calib").mkdir()
    extra = [str(tmp_path / e.lower()) if e in ("CALIB", "m.tflite", "m.bin", "m.pte") else e for e in extra]
    argv = ["export", "mobilenetv4_conv_small", "--random-weights", "--out", str(tmp_path / "m.onnx"), *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and message in err, err
    assert _listing(tmp_path) == ["calib"]


@pytest.mark.slow  # two int8 exports: about a minute on 2 busy cores
def test_cli_ort_int8_weights_picks_the_kernels(tmp_path, capsys):
    """Default: 8-bit u8 weights (ORT's U8U8 kernels); s8-7bit: s8 weights within 7 bits (U8S8)."""
    onnx = pytest.importorskip("onnx", reason="needs the onnx extra")
    pytest.importorskip("onnxruntime", reason="needs the onnx extra")
    from numpy.random import default_rng
    from onnx import numpy_helper
    from PIL import Image

    from mnv4.cli import main

    calib = tmp_path / "calib"
    calib.mkdir()
    rng = default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(calib / f"{i}.png")
    weights = {}
    for choice in (None, "s8-7bit"):
        out = tmp_path / f"{choice or 'default'}.onnx"
        flag = ["--ort-int8-weights", choice] if choice else []
        code = main(["export", "mobilenetv4_conv_small", "--random-weights", "--size", "64", "64", "--int8",
                     "--calib", str(calib), "--calib-images", "4", "--out", str(out), *flag])
        assert code == 0, capsys.readouterr().err
        proto = onnx.load(str(out))
        inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
        conv_weights = {n.input[1] for n in proto.graph.node if n.op_type == "Conv"}
        weights[choice] = [inits[n.input[0]] for n in proto.graph.node
                           if n.op_type == "DequantizeLinear" and n.output[0] in conv_weights and n.input[0] in inits]
        assert len(weights[choice]) > 40
    assert {w.dtype for w in weights[None]} == {np.dtype(np.uint8)}
    assert {w.dtype for w in weights["s8-7bit"]} == {np.dtype(np.int8)}
    assert max(int(np.abs(w.astype(np.int16)).max()) for w in weights["s8-7bit"]) <= 64  # 7 bits (ORT: +-64)
    assert max(int(np.abs(w.astype(np.int16)).max()) for w in weights[None]) > 128  # the full u8 range is used


# -------------------------------------------------------------------------------------------------- QAT ONNX: u8


def _qdq_graph(onnx):
    """float -> Q/DQ (s8 activations, zero point 3) -> Conv (per-channel s8 weights, zero point 0) -> Conv (s8
    weights, no zero point input): the shapes of a PT2E graph's QDQ pairs."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(np.array(0.05, np.float32), "x_scale"),
        numpy_helper.from_array(np.array(3, np.int8), "x_zero"),
        numpy_helper.from_array(rng.integers(-127, 128, (4, 2, 1, 1)).astype(np.int8), "w1"),
        numpy_helper.from_array(rng.uniform(0.01, 0.02, 4).astype(np.float32), "w1_scale"),
        numpy_helper.from_array(np.zeros(4, np.int8), "w1_zero"),
        numpy_helper.from_array(rng.integers(-127, 128, (3, 4, 1, 1)).astype(np.int8), "w2"),
        numpy_helper.from_array(rng.uniform(0.01, 0.02, 3).astype(np.float32), "w2_scale"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zero"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "x_scale", "x_zero"], ["xd"]),
        helper.make_node("DequantizeLinear", ["w1", "w1_scale", "w1_zero"], ["w1d"], axis=0),
        helper.make_node("Conv", ["xd", "w1d"], ["y"]),
        helper.make_node("DequantizeLinear", ["w2", "w2_scale"], ["w2d"], axis=0),
        helper.make_node("Conv", ["y", "w2d"], ["z"]),
    ]
    graph = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 3, 4, 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)


def test_qat_onnx_to_u8_is_exact(tmp_path):
    onnx = pytest.importorskip("onnx", reason="needs the onnx extra")
    pytest.importorskip("onnxruntime", reason="needs the onnx extra")
    from onnx import numpy_helper

    from mnv4.export.onnx import onnx_session, run_session
    from mnv4.export.qat import to_u8

    x = np.random.default_rng(1).standard_normal((1, 2, 4, 4)).astype(np.float32)
    proto = _qdq_graph(onnx)
    onnx.save(proto, str(tmp_path / "s8.onnx"))
    assert to_u8(proto) == 5  # x_zero, w1, w1_zero, w2 and the zero point w2 gets
    onnx.checker.check_model(proto)
    onnx.save(proto, str(tmp_path / "u8.onnx"))
    assert {numpy_helper.to_array(t).dtype.name for t in proto.graph.initializer} == {"float32", "uint8"}
    s8, u8 = (run_session(onnx_session(tmp_path / f"{n}.onnx", optimize=False), x)[0] for n in ("s8", "u8"))
    np.testing.assert_array_equal(u8, s8)  # the same dequantized values, exactly

    weights_only = _qdq_graph(onnx)
    to_u8(weights_only, activations=False)
    types = {t.name: numpy_helper.to_array(t).dtype.name for t in weights_only.graph.initializer}
    assert types["x_zero"] == "int8" and types["w1"] == types["w2"] == "uint8"


def test_only_host_named_staging_folders_are_removed(monkeypatch, tmp_path):
    """A folder is removed only in the ``temp_path`` form (pid and host) of a dead process of this host: an older
    host-less name could be someone's folder, so it stays, as do folders of live processes."""
    from mnv4.engine.outputs import remove_stale_temp_files

    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    with monkeypatch.context() as patch:
        patch.setattr(os, "getpid", lambda: ended.pid)
        dead = temp_path(tmp_path / "a.onnx")
        patch.setattr(os, "getpid", os.getppid)
        live = temp_path(tmp_path / "b.onnx")
    hostless = tmp_path / f".c.onnx.tmp-{ended.pid}"  # the name atomic_save used before it added the host
    for folder in (dead, live, hostless):
        folder.mkdir()
        (folder / "part").write_bytes(b"x")
    assert remove_stale_temp_files(tmp_path) == [dead]
    assert _listing(tmp_path) == sorted([live.name, hostless.name])
