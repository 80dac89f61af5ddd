"""What every run command promises (``mnv4.engine.outputs``), for the commands that did not keep it before the run
machinery was shared: ``mnv4 search`` and ``mnv4 detect train`` (and ``mnv4 train`` where a case is new).

- output locations and names are checked before any work; a new run never overwrites another run's folder;
- temporary files of killed writes are removed by the next start;
- data-derived artefacts (soft labels) are refused for data they were not made from;
- every number a flag takes is finite and in its range; degenerate data is refused; a spec file with impossible
  values is refused in one line, before anything is allocated.

Each case: one line on stderr (``mnv4 CMD: error: ...``), exit code 2, no traceback, nothing written.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch

from mnv4.cli import main

pytest.importorskip("sklearn", reason="the digits come from scikit-learn (dev extra)")


def one_line_error(args: list[str], capsys, expected: str) -> str:
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and ": error: " in err and "Traceback" not in err, err
    assert expected in err, err
    return err


def search_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["search", "--space", "tiny", "--data", str(data), "--out", str(out), "--target", "2.5e7", "--steps", "2",
            "--global-batch", "8", "--workers", "0", "--threads", "1", "--no-progress", "--no-plot",
            "--set", "holdout_fraction=0.2", *extra]


def files_of(folder: Path) -> dict[str, float]:
    return {p.name: p.stat().st_mtime for p in folder.iterdir()} if folder.exists() else {}


# ----------------------------------------------------------------------------------------------- the search
@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--name", "my/arch"], "is not a valid architecture name"),
        (["--name", "mobilenetv4_conv_small"], "registered variant's name"),
        (["--rl-lr", "inf"], "rl_lr must be a finite number"),
        (["--rl-lr", "0"], "rl_lr must be > 0"),
        (["--global-batch", "0"], "global_batch must be >= 2"),
        (["--workers", "-1"], "workers must be >= 0"),
        (["--lr", "nan"], "lr must be a finite number"),
        (["--beta=-inf"], "beta must be a finite number"),
        (["--target-scale", "0", "--target-model", "mobilenetv4_conv_small"], "target_scale must be > 0"),
    ],
)
def test_search_settings_are_checked_before_any_work(tiny_digits, tmp_path, capsys, extra, expected):
    args = search_args(tiny_digits, tmp_path / "out", *extra)
    if "--target-model" in extra:  # T0 from a model instead of a number
        i = args.index("--target")
        del args[i : i + 2]
    one_line_error(args, capsys, expected)
    assert not (tmp_path / "out").exists()


def test_a_new_search_refuses_a_folder_that_holds_a_run(tiny_digits, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "ckpt-00000002.pt").write_bytes(b"a run's checkpoint")
    (out / "search.json").write_text("{}")
    before = files_of(out)
    one_line_error(search_args(tiny_digits, out), capsys, "pass --resume auto to continue it")
    assert files_of(out) == before


def test_latency_table_that_cannot_be_written_is_refused_before_the_search(tiny_digits, tmp_path, capsys):
    folder = tmp_path / "a_folder"
    folder.mkdir()
    one_line_error(search_args(tiny_digits, tmp_path / "out", "--cost", "latency-table", "--latency-table",
                               str(folder)), capsys, "is a folder; give a file name")
    assert not (tmp_path / "out").exists()


def test_one_class_search_is_refused(tiny_digits, tmp_path, capsys):
    one_class = tmp_path / "one_class"
    (one_class / "train").mkdir(parents=True)
    os.symlink(tiny_digits / "train" / "0", one_class / "train" / "0")
    one_line_error(search_args(one_class, tmp_path / "out"), capsys, "a search needs >= 2 classes")


def test_killed_checkpoint_write_of_a_search_is_cleaned_at_the_next_start(tiny_digits, tmp_path):
    from mnv4.engine.checkpoint import list_checkpoints

    out = tmp_path / "out"
    out.mkdir()
    dead = out / f".ckpt-00000002.pt.tmp-4000000@{socket.gethostname()}"  # no such pid: a killed writer's
    dead.write_bytes(b"\0" * 100)
    assert main(search_args(tiny_digits, out, "--resume", "auto", "--stage", "coarse")) == 0
    assert not dead.exists() and list_checkpoints(out)


# ----------------------------------------------------------------------------------------------- detection
@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    from coco_digits import write_coco_digits

    root = tmp_path_factory.mktemp("coco_runs")
    return write_coco_digits(root, 8, "train", digits=(0, 1), size_range=(96, 128), glyph_range=(24, 40))


def detect_args(coco, out: Path, *extra: str) -> list[str]:
    annotations, images = coco
    return ["detect", "train", "--train-annotations", str(annotations), "--train-images", str(images), "--out",
            str(out), "--backbone", "mobilenetv4_conv_small", "--image-size", "64", "--fpn-channels", "16",
            "--epochs", "1", "--global-batch", "4", "--workers", "0", "--threads", "1", "--no-progress",
            "--no-tensorboard", *extra]


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--val-annotations", "ANN"], "give --val-annotations and --val-images together"),
        (["--set", "score_thresh=1.5"], "score_thresh must be in [0, 1]"),
        (["--lr", "inf"], "lr must be a finite number"),
        (["--batch-size", "0"], "batch_size must be >= 1"),
        (["--workers", "-1"], "workers must be >= 0"),
    ],
)
def test_detection_settings_are_checked_before_any_work(coco, tmp_path, capsys, extra, expected):
    extra = [str(coco[0]) if a == "ANN" else a for a in extra]
    one_line_error(detect_args(coco, tmp_path / "out", *extra), capsys, expected)
    assert not (tmp_path / "out").exists()


def test_a_new_detection_run_refuses_a_folder_that_holds_a_run(coco, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"another run's weights")
    (out / "epochs.csv").write_text("epoch,step\n0,2\n")
    before = files_of(out)
    one_line_error(detect_args(coco, out), capsys, "already holds a run (model.safetensors, epochs.csv)")
    assert files_of(out) == before and (out / "model.safetensors").read_bytes() == b"another run's weights"


def test_a_corrupt_validation_image_is_skipped_and_counted_not_fatal(coco, tmp_path):
    """Validation runs after the first epoch: a corrupt image there used to stop the run before its first
    checkpoint. It is now left out (never scored against another image's boxes), counted, and the run goes on."""
    import shutil

    from mnv4.engine.checkpoint import list_checkpoints

    annotations, images = coco
    val = tmp_path / "val_images"
    shutil.copytree(images, val)
    first = sorted(val.glob("*.png"))[0]
    first.write_bytes(first.read_bytes()[:40])  # truncated: undecodable
    out = tmp_path / "out"
    assert main(detect_args(coco, out, "--val-annotations", str(annotations), "--val-images", str(val))) == 0
    rows = (out / "epochs.csv").read_text().splitlines()
    header, last = rows[0].split(","), rows[-1].split(",")
    assert float(last[header.index("val_skipped")]) == 1
    assert list_checkpoints(out) and (out / "model.safetensors").exists()


def test_detect_eval_refuses_a_file_that_names_the_detectors_ids_otherwise(coco, tmp_path, capsys):
    """The label map is ids and names: a COCO file with the detector's ids but its names swapped (its "0" is the
    detector's "1") used to be scored as if it matched, every box counted under the other class."""
    import json

    from mnv4.detection import DetectorSpec, create_detector, save_detector

    annotations, images = coco
    categories = json.loads(annotations.read_text())["categories"]
    swapped = [{"id": c["id"], "name": other["name"]} for c, other in zip(categories, categories[::-1], strict=True)]
    assert [c["id"] for c in swapped] == [c["id"] for c in categories] and swapped != categories
    torch.manual_seed(0)
    spec = DetectorSpec("retinanet", "mobilenetv4_conv_small", 3, 64, 16, swapped)
    weights = save_detector(create_detector(spec).eval(), spec, tmp_path / "det.safetensors")
    one_line_error(["detect", "eval", "--weights", str(weights), "--annotations", str(annotations), "--images",
                    str(images), "--workers", "0"], capsys, "other categories than the detector was trained on")


def test_segment_eval_refuses_a_file_that_names_the_segmenters_ids_otherwise(coco, tmp_path, capsys):
    """As for detectors: a COCO-trained segmenter's label map is its category ids and their names."""
    import json

    from mnv4.segmentation import SegmenterSpec, create_segmenter, save_segmenter

    annotations, images = coco
    data = json.loads(annotations.read_text())
    for ann in data["annotations"]:  # polygons from the boxes: segment eval needs masks
        x, y, w, h = ann["bbox"]
        ann["segmentation"] = [[x, y, x + w, y, x + w, y + h, x, y + h]]
    with_masks = tmp_path / "masks.json"
    with_masks.write_text(json.dumps(data))
    ids, names = [c["id"] for c in data["categories"]], [c["name"] for c in data["categories"]]
    torch.manual_seed(0)
    spec = SegmenterSpec("lraspp", "mobilenetv4_conv_small", 3, image_size=32, inter_channels=8,
                         classes=["background", *names[::-1]], categories=ids)
    weights = save_segmenter(create_segmenter(spec).eval(), spec, tmp_path / "seg.safetensors")
    one_line_error(["segment", "eval", "--weights", str(weights), "--annotations", str(with_masks), "--images",
                    str(images), "--workers", "0"], capsys, "the segmenter was trained on")


# ----------------------------------------------------------------------------------------------- shared artefacts
def test_soft_labels_are_refused_for_another_data_set(tiny_digits, tmp_path, capsys):
    """Labels are looked up by image index: a file made from one image fewer would shift every label by one."""
    import shutil

    from mnv4.model import MobileNetV4
    from mnv4.nas import SPACES
    from mnv4.train import TrainConfig, precompute_soft_labels

    fewer = tmp_path / "fewer"
    shutil.copytree(tiny_digits, fewer)
    next((fewer / "train" / "3").glob("*.png")).unlink()
    torch.manual_seed(0)
    teacher = MobileNetV4(SPACES["tiny"].decode(SPACES["tiny"].largest()), num_classes=10).eval()
    cfg = TrainConfig(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), workers=0)
    labels = precompute_soft_labels(teacher, fewer / "train", cfg, tmp_path / "soft.safetensors", image_size=32)
    args = ["train", "--data", str(tiny_digits), "--out", str(tmp_path / "run"), "--image-size", "32",
            "--workers", "0", "--no-progress", "--no-tensorboard", "--soft-labels", str(labels),
            "--set", "mean=[0.5,0.5,0.5]", "--set", "std=[0.25,0.25,0.25]"]
    capsys.readouterr()  # the log lines of precompute_soft_labels
    one_line_error(args, capsys, "were made from other training images")
    assert not list((tmp_path / "run").glob("ckpt-*.pt"))


def test_malicious_resume_file_is_one_line_without_torchs_advice(tiny_digits, tmp_path, capsys):
    class Payload:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    evil = tmp_path / "evil.pt"
    torch.save({"model": Payload()}, evil)
    err = one_line_error(search_args(tiny_digits, tmp_path / "out", "--resume", str(evil)), capsys,
                         "refuses to load it")
    assert "weights_only" not in err


# ----------------------------------------------------------------------------------------------- spec files
def spec_file(tmp_path: Path, **change) -> Path:
    from mnv4.specs import CONV_SMALL, spec_to_dict

    data = {**spec_to_dict(CONV_SMALL), "name": "custom", **change}
    path = tmp_path / "custom.json"
    path.write_text(json.dumps(data))  # float('inf') is written as Infinity, as a hand-edited file may hold
    return path


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"layer_scale": float("inf")}, "'layer_scale' must be null or a positive finite number"),
        ({"description": 5}, "'description' must be a string"),
        ({"notes": "one note"}, "'notes' must be a list of strings"),
        ({"resolution": 60000}, "GiB for one 60000 px image's forward pass"),
    ],
)
def test_impossible_spec_files_are_one_line(tmp_path, capsys, change, expected):
    path = spec_file(tmp_path, **change)
    one_line_error(["export", str(path), "--random-weights", "--format", "onnx", "--out", str(tmp_path / "x.onnx")],
                   capsys, expected)
    assert not (tmp_path / "x.onnx").exists()
