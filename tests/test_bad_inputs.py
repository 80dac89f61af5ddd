"""Bad input through the command line, as a hostile but realistic user gives it: for each, one clear error line, the
exit code, no traceback, and the good inputs of the same command still processed (issue 9).

predict and eval here; training and export have their own files.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from bad_images import write_bomb_png, write_corrupt_jpeg, write_truncated_copy
from PIL import Image
from safetensors.torch import save_file

import mnv4
from mnv4.cli import main

SMALL = "mobilenetv4_conv_small"
SRC = Path(__file__).resolve().parents[1] / "src"
FAST = ["--img-size", "32", "--no-progress"]


def _weights(path: Path, num_classes: int, nan: bool = False) -> Path:
    torch.manual_seed(0)
    model = mnv4.create_model(SMALL, num_classes=num_classes)
    if nan:  # what a training run that met NaN leaves in its BatchNorm buffers
        next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)).running_var.fill_(float("nan"))
    save_file(model.state_dict(), str(path))
    return path


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    folder = tmp_path_factory.mktemp("weights")
    return {"in1k": _weights(folder / "in1k.safetensors", 1000), "two": _weights(folder / "two.safetensors", 2),
            "nan": _weights(folder / "nan.safetensors", 2, nan=True)}


@pytest.fixture(scope="module")
def bomb(tmp_path_factory) -> Path:
    return write_bomb_png(tmp_path_factory.mktemp("bomb") / "bomb.png")


@pytest.fixture()
def pictures(tmp_path, bomb) -> dict[str, Path]:
    """Good images and every kind of bad one, side by side."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    good = {}
    for i, colour in enumerate(((200, 40, 40), (40, 200, 40), (40, 40, 200))):
        good[f"good{i}"] = folder / f"good{i}.png"
        Image.new("RGB", (48, 40), colour).save(good[f"good{i}"])
    bad = {
        "bomb": Path(shutil.copy(bomb, folder / "bomb.png")),
        "corrupt": write_corrupt_jpeg(folder / "corrupt.jpg"),
        "truncated": write_truncated_copy(good["good0"], folder / "truncated.png"),
        "missing": folder / "missing.png",
    }
    return {**good, **bad}


def _imagefolder(root: Path, pictures: dict[str, Path], bad: tuple[str, ...]) -> Path:
    """Two classes of good images, with the ``bad`` files spread over them."""
    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (40, 40), (60 * i, 200 if label == "a" else 20, 90)).save(root / label / f"{i}.png")
    for i, name in enumerate(bad):
        pictures[name].rename(root / ("a", "b")[i % 2] / pictures[name].name)
    return root


def _one_line_each(err: str, names) -> None:
    assert "Traceback" not in err, err
    for name in names:
        assert sum(name in line for line in err.splitlines()) == 1, (name, err)


# ---------------------------------------------------------------------------------------------------- predict
def test_predict_reports_each_bad_file_and_still_classifies_the_good_ones(pictures, weights, capfd):
    order = ["good0", "bomb", "good1", "corrupt", "truncated", "missing", "good2"]
    rc = main(["predict", *(str(pictures[n]) for n in order), "--weights", str(weights["in1k"]), "--topk", "2",
               "--img-size", "32"])
    out, err = capfd.readouterr()
    assert rc == 1
    lines = out.splitlines()
    for name in ("good0", "good1", "good2"):
        i = lines.index(str(pictures[name]))
        assert all("%" in row for row in lines[i + 1 : i + 3])
    errors = [line for line in err.splitlines() if line.startswith("mnv4 predict: error:")]
    assert len(errors) == 4
    _one_line_each(err, ("bomb.png", "corrupt.jpg", "truncated.png", "missing.png"))
    assert "too large to decode safely" in err and "no such file" in err


def test_predict_with_nan_weights_says_so_per_image(pictures, weights, capfd):
    rc = main(["predict", str(pictures["good0"]), str(pictures["good1"]), "--weights", str(weights["nan"]),
               "--img-size", "32"])
    out, err = capfd.readouterr()
    assert rc == 1 and "%" not in out
    _one_line_each(err, ("good0.png", "good1.png"))
    assert err.count("NaN/inf") == 2


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--labels", "no_such_labels.txt"], "--labels no_such_labels.txt does not exist"),
        (["--weights", "no_such.safetensors"], "--weights no_such.safetensors does not exist"),
        (["--topk", "0"], "--topk must be >= 1"),
        (["--img-size", "16"], "--img-size must be >= 32"),
        (["--crop-pct", "1.5"], r"--crop-pct must be in \(0, 1\]"),
    ],
)
def test_predict_bad_arguments_one_line(pictures, weights, capfd, extra, message):
    import re

    args = ["predict", str(pictures["good0"]), "--weights", str(weights["in1k"]), *extra]
    assert main(args) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.search(message, err[0]) and err[0].startswith("mnv4 predict: error:")


# ---------------------------------------------------------------------------------------------------- eval
def test_eval_skips_bad_files_in_worker_processes_and_scores_the_rest(pictures, weights, tmp_path, capfd):
    data = _imagefolder(tmp_path / "val", pictures, ("bomb", "corrupt", "truncated"))
    out_json = tmp_path / "res.json"
    rc = main(["eval", "--data", str(data), "--weights", str(weights["two"]), "--workers", "2", "--batch-size", "2",
               "--out", str(out_json), *FAST])
    out, err = capfd.readouterr()
    assert rc == 0, err
    _one_line_each(err, ("bomb.png", "corrupt.jpg", "truncated.png"))
    assert "(6 images," in out and "3 unreadable skipped" in out
    record = json.loads(out_json.read_text())
    assert record["images"] == 6 and len(record["skipped"]) == 3
    assert any("too large to decode safely" in s for s in record["skipped"])


def test_eval_strict_stops_at_the_first_bad_file_in_one_line(pictures, weights, tmp_path, capfd):
    data = _imagefolder(tmp_path / "val", pictures, ("corrupt",))
    rc = main(["eval", "--data", str(data), "--weights", str(weights["two"]), "--workers", "2", "--strict", *FAST])
    out, err = capfd.readouterr()
    lines = err.strip().splitlines()
    assert rc == 2 and "top-1" not in out and "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith("mnv4 eval: error:") and "corrupt.jpg" in lines[0]


def test_eval_with_nan_weights_reports_the_nonfinite_count(pictures, weights, tmp_path, capfd):
    data = _imagefolder(tmp_path / "val", pictures, ())
    rc = main(["eval", "--data", str(data), "--weights", str(weights["nan"]), "--workers", "0", *FAST])
    out, err = capfd.readouterr()
    assert rc == 1 and "top-1 0.000" in out and "6 with non-finite logits counted as wrong" in out
    assert "mnv4 eval: error: 6 of 6 images gave NaN/inf logits" in err and "Traceback" not in err


@pytest.mark.parametrize("where", ["folder", "under_a_file"])
def test_eval_unwritable_out_is_found_before_evaluating(pictures, weights, tmp_path, capfd, where):
    data = _imagefolder(tmp_path / "val", pictures, ())
    target = {"folder": tmp_path, "under_a_file": pictures["good0"] / "res.json"}[where]
    rc = main(["eval", "--data", str(data), "--weights", str(weights["two"]), "--workers", "0", "--out",
               str(target), *FAST])
    out, err = capfd.readouterr()
    lines = err.strip().splitlines()
    assert rc == 2 and "top-1" not in out  # refused before the model was loaded and the folder scored
    assert len(lines) == 1 and lines[0].startswith("mnv4 eval: error: --out")


@pytest.mark.parametrize(
    "layout, extra, message",
    [
        ("nowhere", [], "image folder .*nowhere' does not exist"),
        ("three", [], r"3 class folders \(a, b, c\) but the model has 2 outputs"),
        ("one", [], r"1 class folders \(a\) but the model has 2 outputs: which output .* --classes FILE"),
        ("flat", [], "flat folder of images without labels"),
        ("flat", ["--labels", "no_labels.txt"], "label file 'no_labels.txt' does not exist"),
        ("one", ["--classes", "no_classes.txt"], "--classes no_classes.txt does not exist"),
    ],
)
def test_eval_bad_layouts_one_line(pictures, weights, tmp_path, capfd, layout, extra, message):
    import re

    data = tmp_path / layout
    if layout in ("three", "one"):
        for label in ("a", "b", "c")[: 3 if layout == "three" else 1]:
            (data / label).mkdir(parents=True)
            Image.new("RGB", (40, 40)).save(data / label / "x.png")
    elif layout == "flat":
        data.mkdir()
        Image.new("RGB", (40, 40)).save(data / "x.png")
    rc = main(["eval", "--data", str(data), "--weights", str(weights["two"]), "--workers", "0", *extra, *FAST])
    err = capfd.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("mnv4 eval: error:") and re.search(message, err[0]), err


def test_eval_classes_file_maps_a_subset_of_the_model_classes(pictures, weights, tmp_path, capfd):
    data = _imagefolder(tmp_path / "val", pictures, ())
    (data / "b").rename(data / "zebra")
    names = tmp_path / "classes.txt"
    names.write_text("zebra\na\n")
    assert main(["eval", "--data", str(data), "--weights", str(weights["two"]), "--workers", "0", "--classes",
                 str(names), *FAST]) == 0
    assert "(6 images," in capfd.readouterr().out


# ---------------------------------------------------------------------------------------------------- the contract
def test_only_user_errors_are_one_line_a_bug_keeps_its_traceback(pictures, weights, tmp_path, monkeypatch):
    """An out-of-memory error or a bug must not be printed as 'bad input' in one line: it propagates."""
    import mnv4.evaluate

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(mnv4.evaluate, "evaluate", out_of_memory)
    data = _imagefolder(tmp_path / "val", pictures, ())
    with pytest.raises(RuntimeError, match="CUDA out of memory"):
        main(["eval", "--data", str(data), "--weights", str(weights["two"]), *FAST])


def test_a_real_process_prints_no_traceback(pictures, weights, tmp_path):
    """The whole command as a user runs it: a decompression bomb and a corrupt file among good images, eval with
    worker processes, then predict on the same files."""
    data = _imagefolder(tmp_path / "val", pictures, ("bomb", "corrupt"))
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    bad = [str(p) for p in sorted(data.rglob("*")) if p.name in ("bomb.png", "corrupt.jpg")]
    script = (
        "import sys; from mnv4.cli import main; "
        f"rc_eval = main(['eval', '--data', {str(data)!r}, '--weights', {str(weights['two'])!r}, '--workers', '2', "
        "'--img-size', '32', '--no-progress']); "
        f"rc_predict = main(['predict', {str(pictures['good1'])!r}, *{bad!r}, '--weights', "
        f"{str(weights['in1k'])!r}, '--img-size', '32']); print('codes', rc_eval, rc_predict)"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 0 and "codes 0 1" in proc.stdout, proc.stdout + proc.stderr
    assert "(6 images," in proc.stdout and str(pictures["good1"]) in proc.stdout
    for path in bad:
        assert sum(path in line for line in proc.stderr.splitlines()) == 2  # eval's skip line, predict's error line


# ---------------------------------------------------------------------------------------------------- export's images
def test_export_calibration_and_accuracy_images_skip_and_count_bad_files(pictures, tmp_path):
    """Calibration and export --eval read images through mnv4.export.data: a bomb or a corrupt file among them is
    skipped, logged and counted (the count returned to the caller), not a traceback; without a list to record it
    in, load_batch raises its one-line DecodeError."""
    from mnv4.export.data import Preprocess, load_batch
    from mnv4.export.quantize import top1_accuracy, torch_runner
    from mnv4.images import DecodeError

    data = _imagefolder(tmp_path / "val", pictures, ("bomb", "corrupt"))
    model = mnv4.create_model(SMALL, num_classes=2).eval()
    preprocess = Preprocess.for_model(model, (32, 32))
    paths = sorted(data.rglob("*.*"))
    skipped: list = []
    assert load_batch(paths, preprocess, skipped).shape == (6, 3, 32, 32)
    assert sorted(Path(e.path).name for e in skipped) == ["bomb.png", "corrupt.jpg"]
    with pytest.raises(DecodeError, match="bomb.png: too large to decode safely"):
        load_batch(paths, preprocess)
    skipped = []
    accuracy, scored = top1_accuracy(torch_runner(model), data, preprocess, batch_size=4, skipped=skipped)
    assert scored == 6 and len(skipped) == 2 and 0 <= accuracy <= 1

    pytest.importorskip("onnxruntime", reason="int8 calibration needs the onnx extra")
    from mnv4.export.onnx import export_onnx
    from mnv4.export.quantize import quantize_onnx

    fp32 = export_onnx(model, tmp_path / "m.onnx", input_size=(32, 32))
    report = quantize_onnx(fp32, tmp_path / "m.int8.onnx", data, preprocess=preprocess)
    assert (report.num_images, report.skipped) == (6, 2) and "2 unreadable skipped" in report.summary()
