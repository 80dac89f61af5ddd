"""``mnv4 detect``: bad COCO input gives one clear line and exit code 2 (no traceback); documented skips go on with
a counted warning; predict keeps going past an unreadable image. A random tiny detector is enough here."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from coco_digits import write_coco

from mnv4.cli import main
from mnv4.detection import DetectorSpec, create_detector, save_detector

pytest.importorskip("pycocotools", reason="mnv4 detect eval needs pycocotools (the detection extra)")


@pytest.fixture(scope="module")
def detector_file(tmp_path_factory):
    torch.manual_seed(0)
    spec = DetectorSpec("retinanet", "mobilenetv4_conv_small", 3, 64, 16,
                        [{"id": 3, "name": "three"}, {"id": 8, "name": "eight"}])
    return save_detector(create_detector(spec), spec, tmp_path_factory.mktemp("det") / "model.safetensors")


def eval_args(detector_file, path, folder) -> list[str]:
    return ["detect", "eval", "--weights", str(detector_file), "--annotations", str(path), "--images", str(folder),
            "--workers", "0"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"drop": "categories"}, "missing top-level field 'categories'"),
        ({"annotations": [{"id": 1, "image_id": 1, "bbox": [0, 0, 5, 5]}]}, "have no 'category_id' field"),
        ({"annotations": [{"id": 1, "image_id": 1, "category_id": 4, "bbox": [0, 0, 5, 5]}]},
         "category_id 4, which 'categories' does not define"),
        ({"files": False}, "none of the 2 images"),
    ],
)
def test_eval_bad_coco_is_one_line_and_exit_2(detector_file, tmp_path, capsys, change, message):
    path, folder = write_coco(tmp_path, **change)
    assert main(eval_args(detector_file, path, folder)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mnv4 detect: error: ") and message in err[0], err


def test_eval_category_mismatch_with_the_detector(detector_file, tmp_path, capsys):
    cats = [{"id": 3, "name": "three"}, {"id": 9, "name": "nine"}]
    anns = [{"id": 1, "image_id": 1, "category_id": 9, "bbox": [1, 1, 5, 5]}]
    path, folder = write_coco(tmp_path, annotations=anns, categories=cats)
    assert main(eval_args(detector_file, path, folder)) == 2
    assert "other categories than the detector was trained on (first difference: (9, 'nine') in the file, (8, " \
        in capsys.readouterr().err


def test_eval_skips_are_counted_and_the_table_printed(detector_file, tmp_path, capsys):
    """Zero-area / outside boxes dropped, a missing file skipped, an image without annotations kept: each a counted
    warning line, and COCOeval runs on what is left."""
    anns = [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [10, 10, 0, 5]},
            {"id": 2, "image_id": 1, "category_id": 8, "bbox": [500, 10, 5, 5]},
            {"id": 3, "image_id": 2, "category_id": 8, "bbox": [10, 10, 30, 30]}]
    images = [{"id": 1, "file_name": "a.png", "width": 100, "height": 80},
              {"id": 2, "file_name": "b.png", "width": 100, "height": 80},
              {"id": 3, "file_name": "c.png", "width": 100, "height": 80}]
    path, folder = write_coco(tmp_path, images=images, annotations=anns)
    (folder / "c.png").unlink()
    assert main(eval_args(detector_file, path, folder)) == 0
    out, err = capsys.readouterr()
    assert "Average Precision  (AP) @[ IoU=0.50      | area=   all | maxDets=100 ]" in out
    assert "2 images," in out  # c.png skipped
    for line in ("1 boxes dropped: zero or negative width/height", "1 boxes dropped: entirely outside the image",
                 "1 images skipped: image file missing", "1 images without annotations (kept: background-only)"):
        assert line in err, err


def test_predict_writes_drawings_and_json_and_reports_bad_files(detector_file, tmp_path, capsys):
    from PIL import Image

    good = tmp_path / "street.jpg"
    Image.new("RGB", (90, 70), (30, 60, 90)).save(good)
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG not really")
    out = tmp_path / "out"
    code = main(["detect", "predict", str(good), str(bad), "--weights", str(detector_file), "--out", str(out),
                 "--score-thresh", "0.0"])
    assert code == 1
    captured = capsys.readouterr()
    assert "broken.png" in captured.err and "mnv4 detect: error:" in captured.err
    record = json.loads((out / "street.json").read_text())
    assert record["path"] == str(good) and len(record["boxes"]) == len(record["scores"]) == len(record["names"])
    assert record["boxes"] and set(record["names"]) <= {"three", "eight"}  # score 0: every kept box is there
    assert Image.open(out / "street.jpg").size == (90, 70)
    assert not (out / "broken.json").exists()


def test_train_needs_data_and_lists_recipes(tmp_path, capsys):
    assert main(["detect", "train", "--list-recipes"]) == 0
    assert "retinanet_paper" in capsys.readouterr().out
    assert main(["detect", "train", "--out", str(tmp_path)]) == 2
    assert "needs train_annotations" in capsys.readouterr().err
    assert main(["detect", "train", "--set", "nonsense=1"]) == 2
    assert "DetectConfig field" in capsys.readouterr().err


@pytest.mark.slow
def test_a_real_process_prints_no_traceback(detector_file, tmp_path):
    path, folder = write_coco(tmp_path, drop="images")
    done = subprocess.run([sys.executable, "-m", "mnv4.detection", "eval", *eval_args(detector_file, path, folder)[2:]],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("mnv4 detect: error:") and "Traceback" not in done.stderr


# ---------------------------------------------------------------------------------------------------------- export


@pytest.fixture(scope="module")
def detecting_file(tmp_path_factory):
    """A random RetinaNet whose classification bias is 0: every anchor scores about 0.5, so any picture gives
    detections to compare."""
    torch.manual_seed(0)
    spec = DetectorSpec("retinanet", "mobilenetv4_conv_small", 3, 64, 16,
                        [{"id": 3, "name": "three"}, {"id": 8, "name": "eight"}])
    model = create_detector(spec)
    torch.nn.init.zeros_(model.head.classification_head.tower.predictor.pointwise.bias)  # prior 0.5, not 0.01
    return save_detector(model, spec, tmp_path_factory.mktemp("detecting") / "model.safetensors")


def _picture(path):
    import numpy as np
    from PIL import Image

    Image.fromarray(np.random.default_rng(0).integers(0, 256, (72, 88, 3), dtype=np.uint8)).save(path)
    return path


def _export(weights, *extra) -> list[str]:
    return ["detect", "export", "--weights", str(weights), *map(str, extra)]


def _one_line(err: str, message: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mnv4 detect: error: ") and message in lines[0], err


def test_export_refuses_before_any_work(detector_file, tmp_path, capsys):
    """A .pte (ExecuTorch cannot hold torchvision's NMS), a suffix that does not match --format or names no format,
    --out in the way or under a file, an unreadable --verify-images: one line each, exit 2, before the export
    starts (it prints its first line only once the checks passed), nothing written."""
    pytest.importorskip("onnxruntime", reason="ONNX export needs the onnx extra")
    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    taken = tmp_path / "taken.onnx"
    taken.mkdir()
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    cases = [
        (["--out", tmp_path / "d.pte"], "ExecuTorch (.pte) cannot write a detector"),
        (["--format", "executorch", "--out", tmp_path / "d.pte"], "use --format onnx"),
        (["--out", tmp_path / "d.tflite"], "LiteRT (.tflite) cannot write a detector"),
        (["--format", "onnx", "--out", tmp_path / "d.pte"], "--out for --format onnx must end in .onnx"),
        (["--out", tmp_path / "d"], "cannot tell the format from its suffix"),
        (["--out", taken], "exists and is a folder"),
        (["--out", blocker / "sub" / "d.onnx"], "is a file, not a folder"),
        (["--out", tmp_path / "d.onnx", "--verify-images", broken], "broken.png"),
    ]
    for extra, message in cases:
        assert main(_export(detector_file, *extra)) == 2, extra
        captured = capsys.readouterr()
        _one_line(captured.err, message)
        assert captured.out == "", extra
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker", "broken.png", "taken.onnx"]
    assert list(taken.iterdir()) == [] and blocker.read_text() == "a file"


def test_export_checks_before_it_moves_into_place(detecting_file, tmp_path, capsys):
    """A file that fails its check (--tolerance 0: ONNX Runtime's boxes differ from PyTorch's by float rounding) is
    not written and the old one stays; one that passes replaces it; missing parent folders are created."""
    pytest.importorskip("onnxruntime", reason="ONNX export needs the onnx extra")
    from mnv4.detection.export import graph_op_types

    picture = _picture(tmp_path / "street.png")
    out = tmp_path / "out" / "d.onnx"
    out.parent.mkdir()
    out.write_bytes(b"the good file from before")
    assert main(_export(detecting_file, "--out", out, "--verify-images", picture, "--tolerance", "0")) == 1
    captured = capsys.readouterr()
    assert "ONNX check FAILED" in captured.out and "tolerance 0e+00" in captured.out
    _one_line(captured.err, f"nothing was written to {out}")
    assert out.read_bytes() == b"the good file from before" and [p.name for p in out.parent.iterdir()] == ["d.onnx"]

    assert main(_export(detecting_file, "--out", out, "--verify-images", picture)) == 0
    captured = capsys.readouterr()
    assert "ONNX check OK: the same detections as PyTorch (count and labels) on 1 images" in captured.out
    assert "NMS inside the graph: yes" in captured.out and captured.err == ""
    assert [p.name for p in out.parent.iterdir()] == ["d.onnx"] and "NonMaxSuppression" in graph_op_types(out)

    fresh = tmp_path / "new" / "sub" / "d.onnx"
    assert main(_export(detecting_file, "--out", fresh)) == 0  # no pictures: written, and said to be unchecked
    assert "not verified: pass --verify-images" in capsys.readouterr().err
    assert [p.name for p in fresh.parent.iterdir()] == ["d.onnx"]


def test_same_detections_fails_on_a_different_count_or_labels(detecting_file):
    """The detector's comparison: fewer detections or other labels than PyTorch fail the check with the image
    named; equal ones pass; pictures without any detection cannot be compared (one clear error)."""
    from mnv4.detection import load_detector
    from mnv4.detection.export import DetectorForExport, SameDetections
    from mnv4.errors import UserError

    model, _ = load_detector(detecting_file)
    images = [torch.rand(3, 64, 80, generator=torch.Generator().manual_seed(i)) for i in range(2)]

    def runner(detector):
        wrapper = DetectorForExport(detector)
        return lambda x: [t.detach().numpy() for t in wrapper(torch.from_numpy(x))]

    pytorch = runner(model)
    assert SameDetections(images)(model, pytorch, "Test", "d").ok
    fewer = SameDetections(images)(model, lambda x: [o[:-1] for o in pytorch(x)], "Test", "d")
    assert not fewer.ok and "Test check FAILED: image 0:" in fewer.summary()
    relabelled = SameDetections(images)(model, lambda x: [*pytorch(x)[:2], 3 - pytorch(x)[2]], "Test", "d")
    assert not relabelled.ok and "labels" in relabelled.summary()
    with pytest.raises(RuntimeError, match="does not reproduce"):
        relabelled.raise_if_failed()
    quiet, _ = load_detector(detecting_file, score_thresh=1.0)
    with pytest.raises(UserError, match="none of the 2 images gave a detection"):
        SameDetections(images)(quiet, runner(quiet), "Test", "d")
