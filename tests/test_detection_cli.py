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
    assert "the detector was trained on [3, 8]" in capsys.readouterr().err


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
