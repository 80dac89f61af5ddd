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
from mnv4.images import load_image
from mnv4.predict import imagenet_classes, predict
from mnv4.testing import make_nondegenerate
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


def test_predict_says_names_or_indices_as_it_prints_them_when_the_first_file_fails(
    tmp_path, imagenet_weights, digits_model, capsys
):
    bad = tmp_path / "first.txt"
    bad.write_text("not an image")
    photo = draw_images(tmp_path / "imgs")[0]
    assert main(["predict", str(bad), str(photo), "--weights", str(imagenet_weights), "--topk", "2"]) == 1
    out = capsys.readouterr().out
    assert "printing class indices" not in out  # a 1000-class model: names, as printed below
    rows = out.split(str(photo) + "\n", 1)[1].splitlines()[:2]
    assert all(r.split("%", 1)[1].strip().rsplit(" (", 1)[0] in imagenet_classes() for r in rows), rows

    _, weights, val = digits_model
    digit = next((val / "3").iterdir())
    assert main(["predict", str(bad), str(digit), "--weights", str(weights), "--topk", "2"]) == 1
    out = capsys.readouterr().out
    assert "no class names for a 10-class model: printing class indices" in out
    rows = out.split(str(digit) + "\n", 1)[1].splitlines()[:2]
    assert all(r.split("%", 1)[1].strip().startswith("class ") for r in rows), rows


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


# ---------------------------------------------------------------------------------------------------- nothing silent
@pytest.fixture(scope="module")
def small_val(digits_model, tmp_path_factory) -> Path:
    """6 images of each digit from the digits val folder: all 10 classes, quick to score."""
    root = tmp_path_factory.mktemp("small_val")
    for folder in sorted(p for p in digits_model[2].iterdir() if p.is_dir()):
        (root / folder.name).mkdir()
        for path in sorted(folder.iterdir())[:6]:
            shutil.copy(path, root / folder.name / path.name)
    return root


class ColourOracle(torch.nn.Module):
    """A 1000-class 'model' that knows two ImageNet classes by colour: reddish images are lesser pandas (387),
    bluish ones park benches (703). Perfect on the folder below when folders map to ImageNet indices."""

    num_classes = 1000

    def forward(self, x):
        red = x[:, 0].mean((1, 2)) > x[:, 2].mean((1, 2))
        logits = torch.zeros(len(x), self.num_classes)
        logits[red, 387] = logits[~red, 703] = 10.0
        return logits


def _synset_subset(root: Path) -> Path:
    for synset, colour in (("n02509815", (200, 60, 40)), ("n03891251", (40, 60, 200))):
        (root / synset).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (40 + i, 36), colour).save(root / synset / f"{i}.png")
    return root


def test_imagenet_synset_subset_is_scored_with_imagenet_indices_by_eval_and_export(tmp_path):
    """Issue 9, silently wrong 1: two synset folders were numbered 0, 1 (top-1 0.000 where the truth is 100%)."""
    from mnv4.export.data import Preprocess
    from mnv4.export.quantize import top1_accuracy, torch_runner

    folder, oracle = _synset_subset(tmp_path / "val"), ColourOracle()
    cfg = data_config({"input_size": (3, 32, 32)})
    result = evaluate(oracle, folder, cfg, EvalConfig(batch_size=4, workers=0, progress=False))
    assert (result.top1, result.images) == (100.0, 6)
    assert top1_accuracy(torch_runner(oracle), folder, Preprocess.for_model(oracle, (32, 32)), batch_size=4) == (1.0, 6)
    (folder / "misc").mkdir()  # a stray non-synset folder: refused, not renumbered
    (folder / "n03891251" / "0.png").rename(folder / "misc" / "0.png")
    with pytest.raises(UserError, match=r"mixes ImageNet synset folders .* with other names \(misc\)"):
        evaluate(oracle, folder, cfg, EvalConfig(workers=0, progress=False))


def test_eval_and_export_eval_score_a_folder_identically(digits_model, small_val):
    """One folder, one model: `mnv4 eval` and the PyTorch column of `export --eval` see the same tensors (the tag's
    eval_transform; export used a plain bilinear resize) and report the same top-1."""
    from mnv4.export.data import Preprocess
    from mnv4.export.quantize import top1_accuracy, torch_runner

    model, val = digits_model[0], small_val
    cfg = data_config(model, img_size=32)
    preprocess = Preprocess.for_model(model, (32, 32))
    for path in sorted((val / "3").iterdir())[:3]:
        np.testing.assert_array_equal(preprocess(path), eval_transform(cfg)(load_image(path)).numpy())
    result = evaluate(model, val, cfg, EvalConfig(batch_size=20, workers=0, progress=False))
    acc, n = top1_accuracy(torch_runner(model), val, preprocess, batch_size=20)
    assert n == result.images == 60 and 100 * acc == pytest.approx(result.top1, abs=1e-9)
    batch = torch.stack([torch.from_numpy(preprocess(p)) for p in sorted(val.rglob("*.png"))])
    with torch.no_grad():
        assert len(set(model.eval()(batch).argmax(-1).tolist())) >= 3  # predictions differ: agreeing means something


def test_eval_skips_and_counts_undecodable_images_and_scores_the_rest(digits_model, small_val, tmp_path):
    """Eval stopped at the first corrupt image (a worker traceback with workers > 0); now it is skipped, listed and
    the accuracy is over the images scored."""
    from bad_images import write_bomb_png, write_corrupt_jpeg

    model, cfg = digits_model[0], data_config(digits_model[0], img_size=32)
    three_a_class = lambda folder, names: sorted(names)[3:] if Path(folder) != small_val else []  # noqa: E731
    data = shutil.copytree(small_val, tmp_path / "val", ignore=three_a_class)
    clean = evaluate(model, data, cfg, EvalConfig(batch_size=16, workers=0, progress=False))
    bad = [write_corrupt_jpeg(data / "0" / "corrupt.jpg"), write_bomb_png(data / "7" / "bomb.png")]
    for workers in (0, 2):
        result = evaluate(model, data, cfg, EvalConfig(batch_size=16, workers=workers, progress=False))
        assert (result.images, result.top1) == (clean.images, clean.top1) == (30, clean.top1)
        assert [s.split(": ")[0] for s in result.skipped] == [str(p) for p in bad]
    with pytest.raises(UserError, match="corrupt.jpg: not a readable image"):
        evaluate(model, data, cfg, EvalConfig(batch_size=16, workers=2, progress=False, strict=True))


def test_nan_logits_are_counted_not_scored(digits_model, small_val):
    """Issue 9, silently wrong 6 (eval side): NaN logits went into top-1 without a word."""
    model, val = digits_model[0], small_val
    broken = mnv4.create_model(SMALL, num_classes=10)
    broken.load_state_dict(model.state_dict())
    broken.eval()
    next(m for m in broken.modules() if isinstance(m, torch.nn.BatchNorm2d)).running_var.fill_(float("nan"))
    result = evaluate(broken, val, data_config(broken, img_size=32), EvalConfig(workers=0, progress=False))
    assert result.to_dict()["nonfinite"] == result.images == 60
    assert result.top1 == result.top5 == 0.0
    assert "non-finite logits counted as wrong" in result.summary()
    results = predict(broken, sorted((val / "3").iterdir())[:2])
    assert [r.ok for r in results] == [False, False] and "NaN/inf" in results[0].error
