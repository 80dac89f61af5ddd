"""`mnv4 predict` and `mnv4 eval` end to end with weights files the tests write, and the torch.hub entry points."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import mnv4
from mnv4.cli import main
from mnv4.errors import UserError
from mnv4.evaluate import EvalConfig, evaluate, read_label_file
from mnv4.predict import imagenet_classes, predict
from mnv4.testing import make_nondegenerate
from mnv4.images import load_image
from mnv4.transforms import data_config, eval_transform

SMALL = "mobilenetv4_conv_small"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def imagenet_weights(tmp_path_factory):
    torch.manual_seed(0)
    model = make_nondegenerate(mnv4.create_model(SMALL), input_size=(96, 96), batch_size=4, passes=1)
    path = tmp_path_factory.mktemp("w") / "in1k.safetensors"
    save_file(model.state_dict(), str(path))
    return path


@pytest.fixture(scope="module")
def digits_model(tmp_path_factory):
    """A 10-class conv_small with non-degenerate weights (distinct predictions per image) and its val folder."""
    pytest.importorskip("sklearn", reason="the digits data set comes from scikit-learn (dev extra)")
    from digits import write_digits_imagefolder

    root = write_digits_imagefolder(tmp_path_factory.mktemp("digits"), size=32)
    torch.manual_seed(1)
    model = make_nondegenerate(mnv4.create_model(SMALL, num_classes=10), input_size=(64, 64), batch_size=4)
    path = root / "digits10.safetensors"
    save_file(model.state_dict(), str(path))
    return model, path, root / "val"


def draw_images(folder: Path) -> list[Path]:
    """A drawn 'photo' in every awkward form predict must accept, plus one file that is no image."""
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:120, 0:160]
    rgb = np.stack([xx * 1.5, yy * 2.0, 255 - xx], -1).clip(0, 255).astype(np.uint8)
    rgb[(yy - 60) ** 2 + (xx - 80) ** 2 < 900] = (20, 200, 40)
    base = Image.fromarray(rgb, "RGB")
    paths = {name: folder / name for name in
             ("photo.jpg", "grey.png", "cmyk.jpg", "rgba.png", "deep16.png", "rotated.jpg", "notes.txt")}
    base.save(paths["photo.jpg"], quality=90)
    base.convert("L").save(paths["grey.png"])
    base.convert("CMYK").save(paths["cmyk.jpg"])
    rgba = base.convert("RGBA")
    rgba.putalpha(128)
    rgba.save(paths["rgba.png"])
    Image.fromarray(np.asarray(base.convert("L")).astype(np.uint16) * 257).save(paths["deep16.png"])
    exif = Image.Exif()
    exif[0x0112] = 8
    base.save(paths["rotated.jpg"], exif=exif.tobytes())
    paths["notes.txt"].write_text("shopping list: milk, eggs")
    return list(paths.values())


def test_imagenet_class_names_ship_with_the_package():
    names = imagenet_classes()
    assert len(names) == 1000 == len(set(names))
    assert names[0] == "tench" and names[281] == "tabby" and names[999] == "toilet tissue"


def test_predict_cli_on_awkward_images_continues_past_a_bad_file(tmp_path, imagenet_weights, capsys):
    images = draw_images(tmp_path / "imgs")
    rc = main(["predict", *map(str, images), "--model", SMALL, "--weights", str(imagenet_weights), "--topk", "3"])
    out, err = capsys.readouterr()
    assert rc == 1  # one file failed, the others ran
    assert "notes.txt: not a readable image" in err and err.count("error:") == 1
    names = set(imagenet_classes())
    blocks = out.split("\n")
    for path in images[:-1]:
        i = blocks.index(str(path))
        rows = blocks[i + 1 : i + 4]
        probs = [float(r.split("%")[0]) for r in rows]
        labels = [r.split("%", 1)[1].strip().rsplit(" (", 1)[0] for r in rows]
        assert all(label in names for label in labels), rows
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 100.0 + 1e-6
    assert "224 px, crop_pct 0.875" in out  # the protocol of the default tag


def test_predict_library_matches_a_direct_forward(tmp_path, imagenet_weights):
    model = mnv4.create_model(SMALL, pretrained=imagenet_weights).eval()
    images = draw_images(tmp_path / "imgs")
    results = predict(model, images, topk=5)
    assert [r.ok for r in results] == [True] * 6 + [False]
    cfg = data_config(model)
    with torch.no_grad():
        probs = model(eval_transform(cfg)(load_image(images[0]))[None]).softmax(-1)[0]
    top = probs.topk(5)
    assert results[0].indices == top.indices.tolist()
    np.testing.assert_allclose(results[0].probs, top.values.tolist(), rtol=1e-3, atol=1e-6)  # batch of 6 vs 1
    assert results[0].labels == [imagenet_classes()[i] for i in top.indices.tolist()]


def test_predict_prints_indices_without_class_names(digits_model, capsys):
    _, weights, val = digits_model
    image = next((val / "3").iterdir())
    assert main(["predict", str(image), "--weights", str(weights), "--topk", "20"]) == 0
    out = capsys.readouterr().out
    assert "no class names for a 10-class model" in out and "class " in out
    assert out.count("%") == 10  # topk clamps to the number of classes


def test_eval_matches_a_direct_computation(digits_model, tmp_path, capsys):
    model, weights, val = digits_model
    out_json = tmp_path / "res.json"
    rc = main(["eval", "--data", str(val), "--model", SMALL, "--weights", str(weights), "--img-size", "32",
               "--batch-size", "50", "--workers", "0", "--out", str(out_json), "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    result = json.loads(out_json.read_text())

    cfg = data_config(model, img_size=32)
    transform = eval_transform(cfg)
    folders = sorted(p for p in val.iterdir() if p.is_dir())
    files = [(p, label) for label, folder in enumerate(folders) for p in sorted(folder.iterdir())]
    batch = torch.stack([transform(load_image(p)) for p, _ in files])
    labels = torch.tensor([label for _, label in files])
    with torch.no_grad():
        correct = int((model.eval()(batch).argmax(-1) == labels).sum())
    total = len(files)
    assert result["images"] == total > 300
    assert result["top1"] == pytest.approx(100.0 * correct / total)
    assert 0 < result["top1"] <= result["top5"] <= 100
    assert (result["img_size"], result["crop_pct"], result["interpolation"]) == (32, 0.875, "bicubic")
    assert result["images_per_s"] > 0 and result["weights"] == str(weights)
    assert "@ 32 px, crop_pct 0.875" in printed


def test_eval_flat_folder_with_label_file(digits_model, tmp_path):
    model, _, val = digits_model
    flat = tmp_path / "flat"
    flat.mkdir()
    lines = ["# filename label"]
    for label, folder in enumerate(sorted(p for p in val.iterdir() if p.is_dir())):
        for p in sorted(folder.iterdir())[:6]:
            shutil.copy(p, flat / f"{label}_{p.name}")
            lines.append(f"{label}_{p.name} {label}")
    (tmp_path / "val.txt").write_text("\n".join(lines) + "\n")
    run = EvalConfig(batch_size=16, workers=0, progress=False)
    cfg = data_config(model, img_size=32)
    flat_result = evaluate(model, flat, cfg, run, label_file=tmp_path / "val.txt")
    assert flat_result.images == 60

    subset = tmp_path / "subset"
    for folder in sorted(p for p in val.iterdir() if p.is_dir()):
        (subset / folder.name).mkdir(parents=True)
        for p in sorted(folder.iterdir())[:6]:
            shutil.copy(p, subset / folder.name / p.name)
    assert evaluate(model, subset, cfg, run).top1 == flat_result.top1
    # channels-last gives the same predictions (same maths, other memory layout)
    cl = evaluate(model, subset, cfg, EvalConfig(batch_size=16, workers=0, progress=False, channels_last=True))
    assert abs(cl.top1 - flat_result.top1) <= 100 / 60 + 1e-9
    amp = evaluate(model, subset, cfg, EvalConfig(batch_size=16, workers=0, progress=False, amp=True))
    assert amp.images == 60 and amp.amp


def test_eval_bad_layouts_give_one_clear_error(tmp_path, capsys):
    (tmp_path / "flat").mkdir()
    Image.new("RGB", (40, 40)).save(tmp_path / "flat" / "a.png")
    bad = tmp_path / "labels.txt"
    bad.write_text("a.png 3\nb.png three\n")
    with pytest.raises(ValueError, match=r"labels.txt:2: expected 'filename label'"):
        read_label_file(bad)
    model = mnv4.create_model(SMALL, num_classes=10)
    with pytest.raises(UserError, match="flat folder of images without labels.*label file"):
        evaluate(model, tmp_path / "flat", run=EvalConfig(workers=0, progress=False))
    missing = tmp_path / "missing.txt"
    missing.write_text("a.png 1\nzzz.png 2\n")
    with pytest.raises(UserError, match="zzz.png"):
        evaluate(model, tmp_path / "flat", run=EvalConfig(workers=0, progress=False), label_file=missing)
    assert main(["eval", "--data", str(tmp_path / "nope"), "--weights", "x.safetensors"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_torch_hub_entry_points(imagenet_weights):
    import importlib.util

    spec = importlib.util.spec_from_file_location("mnv4_hubconf", REPO / "hubconf.py")
    hubconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf)
    assert hubconf.dependencies == ["torch", "torchvision"]
    for name in mnv4.list_models():
        assert callable(getattr(hubconf, name)) and getattr(hubconf, name).__name__ == name

    model = torch.hub.load(str(REPO), SMALL, source="local", pretrained=False, num_classes=7)
    assert isinstance(model, mnv4.MobileNetV4) and model.num_classes == 7
    loaded = torch.hub.load(str(REPO), SMALL, source="local", pretrained=str(imagenet_weights))
    ref = mnv4.create_model(SMALL, pretrained=imagenet_weights)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), ref.state_dict().values(), strict=True))
