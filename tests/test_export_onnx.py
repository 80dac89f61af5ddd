"""ONNX export of every variant (hybrids included), checked in ONNX Runtime, and the `mnv4 export` command."""

from __future__ import annotations

import pytest
import torch

import mnv4
from mnv4.testing import make_nondegenerate

onnx = pytest.importorskip("onnx", reason="needs the onnx extra: pip install 'mnv4[onnx]'")
pytest.importorskip("onnxruntime", reason="needs the onnx extra: pip install 'mnv4[onnx]'")
pytest.importorskip("onnxslim", reason="needs the onnx extra: pip install 'mnv4[onnx]'")

from mnv4.export.onnx import export_onnx, onnx_session, run_session, verify_onnx  # noqa: E402

SIZE = (64, 96)  # small and non-square


def _model(name: str, **kwargs) -> mnv4.MobileNetV4:
    torch.manual_seed(0)
    model = mnv4.create_model(name, **kwargs)
    return make_nondegenerate(model, seed=1, input_size=(64, 64), batch_size=2, passes=1)


@pytest.mark.parametrize("name", mnv4.list_models())
def test_onnx_export_every_variant(name, tmp_path):
    model = _model(name)
    path = export_onnx(model, tmp_path / f"{name}.onnx", input_size=SIZE)
    check = verify_onnx(model, path, input_size=SIZE, batch_sizes=(1, 3))  # dynamic batch
    assert check.ok, check.summary()
    assert check.max_rel_error < (1e-4 if "conv" in name else 5e-4), check.summary()

    proto = onnx.load(str(path))
    assert proto.opset_import[0].version >= 17
    ops = {n.op_type for n in proto.graph.node}
    assert "BatchNormalization" not in ops  # folded
    if "hybrid" in name:  # the Mobile MQA as plain ops any runtime has
        assert {"MatMul", "Softmax"} <= ops
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, *SIZE]


def test_onnx_dynamic_hw_and_broken_file_detected(tmp_path):
    model = _model("mobilenetv4_hybrid_medium")
    path = export_onnx(model, tmp_path / "hm.onnx", input_size=(64, 64), dynamic_hw=True)
    for size in ((64, 64), (96, 128)):
        check = verify_onnx(model, path, input_size=size, batch_sizes=(1,))
        assert check.max_rel_error < 5e-4, (size, check.summary())
    # a different model's weights must fail the check loudly
    other = _model("mobilenetv4_hybrid_medium")
    make_nondegenerate(other, seed=7, input_size=(64, 64), batch_size=2, passes=1)
    bad = verify_onnx(other, path, input_size=(64, 64))
    assert not bad.ok
    with pytest.raises(RuntimeError, match="does not reproduce"):
        bad.raise_if_failed()


def test_onnx_features_only(tmp_path):
    model = _model("mobilenetv4_conv_small", features_only=True, out_indices=(2, 3, 4))
    path = export_onnx(model, tmp_path / "feat.onnx", input_size=SIZE)
    check = verify_onnx(model, path, input_size=SIZE)
    assert check.ok and check.max_rel_error < 1e-4
    session = onnx_session(path)
    outs = run_session(session, torch.randn(1, 3, *SIZE).numpy())
    assert [o.shape[1] for o in outs] == model.feature_info.channels()
    assert [o.name for o in session.get_outputs()] == ["features_2", "features_3", "features_4"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mobilenetv4_conv_small", "mobilenetv4_hybrid_medium"])
def test_onnx_dynamo_exporter(name, tmp_path):
    pytest.importorskip("onnxscript", reason="the dynamo exporter needs onnxscript (mnv4[onnx])")
    model = _model(name)
    path = export_onnx(model, tmp_path / "m.onnx", input_size=SIZE, exporter="dynamo")
    assert verify_onnx(model, path, input_size=SIZE, batch_sizes=(1, 2)).max_rel_error < 5e-4


def test_onnx_bad_arguments(tmp_path):
    model = mnv4.create_model("mobilenetv4_conv_small")
    with pytest.raises(ValueError, match="opset"):
        export_onnx(model, tmp_path / "m.onnx", opset=13)
    with pytest.raises(ValueError, match=">= 32"):
        export_onnx(model, tmp_path / "m.onnx", input_size=(16, 16))
    with pytest.raises(TypeError, match="MobileNetV4"):
        export_onnx(torch.nn.Conv2d(3, 3, 1), tmp_path / "m.onnx")


def test_missing_extra_names_the_pip_command(monkeypatch):
    import mnv4.export as export_pkg
    from mnv4.export import MissingExtraError, require

    real_import = export_pkg.importlib.import_module

    def fake_import(name, *args, **kwargs):
        if name.split(".")[0] in ("coremltools", "litert_torch"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(export_pkg.importlib, "import_module", fake_import)
    with pytest.raises(MissingExtraError, match=r"pip install 'mnv4\[coreml\]'"):
        require("coremltools")
    with pytest.raises(MissingExtraError, match=r"pip install 'mnv4\[tflite\]'"):
        require("litert_torch")
    assert require("onnx") is not None


# ------------------------------------------------------------------------------------------------ CLI


def test_cli_export_onnx_verifies(tmp_path, capsys):
    from safetensors.torch import save_file

    from mnv4.cli import main

    model = _model("mobilenetv4_conv_small", num_classes=10)
    weights = tmp_path / "w.safetensors"
    save_file(model.state_dict(), str(weights))
    out = tmp_path / "cs.onnx"
    code = main(["export", "mobilenetv4_conv_small", "--format", "onnx", "--weights", str(weights),
                 "--size", "64", "96", "--out", str(out)])
    text = capsys.readouterr().out
    assert code == 0, text
    assert "ONNX check OK" in text and "max |diff| / max |torch output|" in text
    session = onnx_session(out)
    assert session.get_outputs()[0].shape[1] == 10


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--int8"], "--int8 needs --calib"),
        (["--fp16"], "--fp16 is not available for --format onnx"),
        (["--size", "16", "16"], "--size must be >= 32"),
        (["--weights", "/nonexistent.safetensors"], "does not exist"),
    ],
)
def test_cli_export_bad_input_one_line(tmp_path, capsys, extra, message):
    from mnv4.cli import main

    code = main(["export", "mobilenetv4_conv_small", "--format", "onnx", "--out", str(tmp_path / "m.onnx"), *extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "m.onnx").exists()


def test_cli_wrong_suffix(tmp_path, capsys):
    from mnv4.cli import main

    assert main(["export", "mobilenetv4_conv_small", "--format", "tflite", "--out", str(tmp_path / "m.onnx")]) == 2
    assert "must end in .tflite" in capsys.readouterr().err
