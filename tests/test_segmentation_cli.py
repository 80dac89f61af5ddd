"""``mnv4 segment``: bad input gives one clear line and exit code 2 (no traceback), before any work -- no run folder
claimed, no file written; predict keeps going past an unreadable image; ``models`` counts next to torchvision's."""

from __future__ import annotations

import json

import pytest
import torch

from mnv4.cli import main
from mnv4.segmentation import SegmenterSpec, create_segmenter, save_segmenter
from mnv4.synthetic import synthetic_segmentation


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return synthetic_segmentation(tmp_path_factory.mktemp("cli_shapes"), train=4, val=2, size=32)


@pytest.fixture(scope="module")
def segmenter_file(tmp_path_factory):
    torch.manual_seed(0)
    spec = SegmenterSpec("lraspp", "mobilenetv4_conv_small", 6, image_size=32, inter_channels=8)
    return save_segmenter(create_segmenter(spec).eval(), spec, tmp_path_factory.mktemp("seg") / "model.safetensors")


def one_error_line(capsys, message: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mnv4 segment: error: ") and message in err[0], err
    return err[0]


def train_args(shapes, out, *extra: str) -> list[str]:
    return ["segment", "train", "--train-images", str(shapes.images("train")), "--train-masks",
            str(shapes.masks("train")), "--num-classes", "6", "--out", str(out), "--image-size", "32",
            "--global-batch", "2", "--max-steps", "1", "--workers", "0", "--no-progress", "--no-tensorboard", *extra]


@pytest.mark.parametrize(("extra", "message"), [
    (["--aux"], "aux (the FCN head on the /8 map) is DeepLabV3's"),
    (["--output-stride", "4"], "output_stride must be in [8, 32]"),
    (["--output-stride", "24"], "output_stride must be one of (8, 16, 32)"),
    (["--lr-schedule", "step"], "lr_schedule must be one of ('cosine', 'poly')"),
    (["--optimizer", "lamb"], "optimizer must be one of"),
    (["--num-classes", "300"], "num_classes must be in [2, 255]"),
    (["--num-classes", "3"], "are not classes: with num_classes=3"),  # the masks hold 0..5
    (["--scale-min", "2", "--scale-max", "1"], "need 0 < scale_min <= scale_max"),
    (["--set", "randaug_layers=2"], "RandAugment is not applied to segmentation"),
    (["--train-annotations", "x.json"], "two forms of one data set"),
    (["--val-masks", "somewhere"], "--val-images is needed with --val-masks"),
    (["--val-images", "somewhere"], "--val-images needs its labels"),
    (["--train-split", "missing.txt"], "--train-split missing.txt: does not exist"),
    (["--class-names", "missing.txt"], "--class-names missing.txt: does not exist"),
    (["--lr", "nan"], "lr must be a finite number"),
    (["--set", "categories=[1, 1]"], "categories must be distinct"),
    (["--model", "mobilenetv4_conv_smal"], "unknown model 'mobilenetv4_conv_smal'"),
    (["--backbone", "mobilenetv4_conv_smal"], "unknown model 'mobilenetv4_conv_smal'"),  # detect's old spelling
    (["--arch", "fcn"], "arch must be one of ('lraspp', 'deeplabv3')"),
])
def test_train_bad_input_is_one_line_and_claims_nothing(shapes, tmp_path, capsys, extra, message):
    out = tmp_path / "run"
    assert main(train_args(shapes, out, *extra)) == 2
    one_error_line(capsys, message)
    assert not out.exists() or not any(out.iterdir())


def test_train_data_problems_are_one_line(shapes, tmp_path, capsys):
    assert main(["segment", "train", "--out", str(tmp_path / "a")]) == 2
    one_error_line(capsys, "training needs data: --train-images DIR")
    args = train_args(shapes, tmp_path / "b")
    assert main([a for a in args if a not in ("--num-classes", "6")]) == 2
    one_error_line(capsys, "a mask folder needs --num-classes N")
    args[args.index("--train-images") + 1] = str(tmp_path / "nowhere")
    assert main(args) == 2
    one_error_line(capsys, "nowhere: does not exist")
    names = tmp_path / "names.txt"
    names.write_text("background\ndisc\n")
    assert main(train_args(shapes, tmp_path / "c", "--class-names", str(names))) == 2
    one_error_line(capsys, "has 2 names for 6 classes")


def test_train_output_folder_problems_are_one_line(shapes, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert main(train_args(shapes, tmp_path / "file")) == 2
    one_error_line(capsys, "is a file; give a folder")
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "best.pt").write_bytes(b"")
    assert main(train_args(shapes, taken)) == 2
    one_error_line(capsys, "already holds a run (best.pt): pass --resume auto")


def test_list_recipes_and_a_recipes_values(capsys):
    assert main(["segment", "train", "--list-recipes"]) == 0
    assert capsys.readouterr().out.split() == ["deeplabv3_torchvision", "lraspp_torchvision", "shapes_proxy"]
    from mnv4.segmentation import load_segment_config

    cfg = load_segment_config("deeplabv3_torchvision", model="mobilenetv4_conv_small")
    assert (cfg.optimizer, cfg.lr, cfg.momentum, cfg.lr_schedule, cfg.epochs, cfg.crop_size) == (
        "sgd", 0.01, 0.9, "poly", 30, 480)
    assert cfg.aux and cfg.atrous_rates == (12, 24, 36) and cfg.model == "mobilenetv4_conv_small"
    assert main(["segment", "train", "--recipe", "nope"]) == 2
    one_error_line(capsys, "unknown segmentation recipe 'nope'")


@pytest.mark.parametrize(("extra", "message"), [
    ([], "give the labels: --masks DIR (PNG masks) or --annotations FILE"),
    (["--masks", "M", "--annotations", "A"], "give the labels"),
    (["--annotations", "A", "--split", "S"], "--split selects pairs of a mask folder"),
    (["--masks", "M", "--batch-size", "0"], "--batch-size must be >= 1"),
])
def test_eval_bad_input_is_one_line(segmenter_file, shapes, capsys, extra, message):
    args = ["segment", "eval", "--weights", str(segmenter_file), "--images", str(shapes.images("val")), *extra]
    assert main(args) == 2
    one_error_line(capsys, message)


def test_eval_refuses_a_non_segmenter_and_a_mask_folder_of_other_classes(segmenter_file, shapes, tmp_path, capsys):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    args = ["--images", str(shapes.images("val")), "--masks", str(shapes.masks("val")), "--workers", "0"]
    assert main(["segment", "eval", "--weights", str(tmp_path / "other.safetensors"), *args]) == 2
    one_error_line(capsys, "has no segmenter description")
    torch.manual_seed(0)
    spec = SegmenterSpec("lraspp", "mobilenetv4_conv_small", 2, image_size=32, inter_channels=8)
    two = save_segmenter(create_segmenter(spec).eval(), spec, tmp_path / "two.safetensors")
    assert main(["segment", "eval", "--weights", str(two), *args]) == 2  # the masks hold the triangle's label 2
    one_error_line(capsys, "are not classes: with num_classes=2")


def test_predict_writes_what_it_can_and_names_the_bad_file(segmenter_file, shapes, tmp_path, capsys):
    good = sorted(shapes.images("val").glob("*.png"))[0]
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    out = tmp_path / "pred"
    assert main(["segment", "predict", str(good), str(bad), "--weights", str(segmenter_file), "--out", str(out)]) == 1
    captured = capsys.readouterr()
    assert "broken.jpg" in captured.err and "wrote 1 masks and overlays" in captured.out
    assert sorted(p.name for p in out.iterdir()) == [f"{good.stem}_mask.png", f"{good.stem}_overlay.png"]
    (tmp_path / "file").write_text("x")
    assert main(["segment", "predict", str(good), "--weights", str(segmenter_file), "--out",
                 str(tmp_path / "file")]) == 2
    one_error_line(capsys, "is a file; give a folder")


@pytest.mark.slow  # builds seven segmenters (~30 s on a loaded machine); test_mac_counting_is_torchvisions is fast
def test_models_counts_next_to_torchvisions(capsys):
    assert main(["segment", "models", "--size", "64", "--num-classes", "5", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert {"lraspp mobilenetv4_conv_small", "lraspp_mobilenet_v3_large", "deeplabv3 mobilenetv4_conv_medium",
            "deeplabv3_mobilenet_v3_large"} <= set(rows)
    small, medium = rows["lraspp mobilenetv4_conv_small"], rows["lraspp mobilenetv4_conv_medium"]
    assert small["reference"] == "lraspp_mobilenet_v3_large" and small["macs"] < medium["macs"]
    assert main(["segment", "models", "--size", "8"]) == 2
    one_error_line(capsys, "--size must be >= 32")
