"""mnv4.images: the one loader, scanner and folder -> class-index rule that predict, eval, training and export share."""

import io

import numpy as np
import pytest
import torch
from bad_images import write_bomb_png, write_corrupt_jpeg, write_truncated_copy
from PIL import Image

from mnv4.errors import UserError
from mnv4.imagenet import imagenet_classes, imagenet_synsets
from mnv4.images import (
    DecodeError,
    class_indices,
    load_image,
    read_label_file,
    scan_image_folder,
    scan_images,
    to_rgb,
)
from mnv4.transforms import data_config, eval_transform

SYNSETS = imagenet_synsets()


def picture(h=40, w=60, seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([xx * 255 / w, yy * 255 / h, 128 + 100 * np.sin(xx / 5.0)], -1) + rng.normal(0, 6, (h, w, 3))
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


def _roundtrip(img: Image.Image, fmt: str, **save) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, fmt, **save)
    buf.seek(0)
    return Image.open(buf)


# ---------------------------------------------------------------------------------------------------- decoding
def test_awkward_images_become_upright_rgb(tmp_path):
    base = picture()
    grey = to_rgb(base.convert("L"))
    assert grey.mode == "RGB" and np.array_equal(np.asarray(grey)[..., 0], np.asarray(grey)[..., 2])
    cmyk = to_rgb(_roundtrip(base.convert("CMYK"), "JPEG", quality=95))
    assert cmyk.mode == "RGB" and np.abs(np.asarray(cmyk, float) - np.asarray(base, float)).mean() < 25

    rgba = base.convert("RGBA")
    alpha = np.full((40, 60), 255, np.uint8)
    alpha[:, :30] = 0  # left half fully transparent -> white paper
    rgba.putalpha(Image.fromarray(alpha))
    flat = np.asarray(to_rgb(_roundtrip(rgba, "PNG")))
    assert (flat[:, :30] == 255).all() and np.array_equal(flat[:, 30:], np.asarray(base)[:, 30:])
    palette = base.convert("P")
    palette.info["transparency"] = 0
    assert to_rgb(_roundtrip(palette, "PNG", transparency=0)).mode == "RGB"

    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: stored rotated, shown after 90 degrees clockwise
    rotated_path = tmp_path / "rotated.jpg"
    base.save(rotated_path, exif=exif.tobytes(), quality=95)
    assert Image.open(rotated_path).size == (60, 40)
    assert load_image(rotated_path).size == (40, 60)

    for img in (grey, cmyk, load_image(rotated_path)):
        out = eval_transform(data_config("mobilenetv4_conv_small.e2400_r224_in1k"))(img)
        assert out.shape == (3, 224, 224) and torch.isfinite(out).all()


def test_deep_and_float_pixels_scale_by_format_not_by_content(tmp_path):
    """16-bit is /257 and float is [0, 1] whatever the image holds: a dark 16-bit image stays dark (it used to be
    read as 8-bit when its values happened to be < 256), and one image's values mean what another's do."""
    ramp = np.linspace(0, 65535, 40 * 60).reshape(40, 60).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    deep = np.asarray(load_image(tmp_path / "deep.png"))
    assert deep.dtype == np.uint8 and deep[0, 0, 0] == 0 and deep[-1, -1, 0] == 255
    assert abs(int(deep[20, 30, 0]) - round(int(ramp[20, 30]) / 257)) <= 1

    dark = np.full((8, 8), 200, np.uint16)  # 200 / 65535: nearly black
    Image.fromarray(dark).save(tmp_path / "dark16.png")
    assert np.asarray(load_image(tmp_path / "dark16.png")).max() == 1  # round(200 / 257)

    floats = np.array([[0.0, 0.5, 1.0, 2.0, -1.0, np.nan]], np.float32)
    assert np.asarray(to_rgb(Image.fromarray(floats, "F")))[0, :, 0].tolist() == [0, 128, 255, 255, 0, 0]
    bright = np.full((2, 2), 0.25, np.float32)  # a float image's scale does not depend on its maximum
    assert np.asarray(to_rgb(Image.fromarray(bright, "F"))).max() == 64


def test_every_bad_file_is_one_decode_error_naming_it(tmp_path):
    good = tmp_path / "good.png"
    picture().save(good)
    cases = {
        write_corrupt_jpeg(tmp_path / "corrupt.jpg"): "not a readable image",
        write_truncated_copy(good, tmp_path / "cut.png"): "not a readable image",
        tmp_path / "gone.png": "no such file",
        write_bomb_png(tmp_path / "bomb.png"): "too large to decode safely",
    }
    (tmp_path / "notes.jpg").write_text("not an image")
    cases[tmp_path / "notes.jpg"] = "not a readable image"
    (tmp_path / "folder.png").mkdir()
    cases[tmp_path / "folder.png"] = "is a folder"
    for path, reason in cases.items():
        with pytest.raises(DecodeError) as info:
            load_image(path)
        err = info.value
        assert isinstance(err, UserError) and err.path == str(path) and reason in err.reason
        assert str(err).startswith(f"{path}: ") and "\n" not in str(err)
    import pickle  # errors travel from DataLoader workers intact

    copy = pickle.loads(pickle.dumps(DecodeError(good, "why")))
    assert (copy.path, copy.reason, str(copy)) == (str(good), "why", f"{good}: why")


# ---------------------------------------------------------------------------------------------------- layouts
def _save(path, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    picture(16, 16, seed).save(path)
    return path


def test_imagefolder_scan_ignores_hidden_keeps_empty_classes_and_is_the_same_for_every_caller(tmp_path):
    from mnv4.export.data import scan_folder

    root = tmp_path / "data"
    _save(root / "cat" / "a.png")
    _save(root / "cat" / "deep" / "b.jpg")
    _save(root / "cat" / "._a.png")  # macOS resource fork: hidden, not an image
    (root / "cat" / "notes.txt").write_text("x")
    (root / "dog").mkdir()  # empty: still a class, so 'eel' stays class 2
    _save(root / "eel" / "c.PNG")
    _save(root / ".ipynb_checkpoints" / "d.png")
    _save(root / "loose.png")
    images = scan_images(root)
    assert images.classes == ["cat", "dog", "eel"]
    assert [p.relative_to(root).as_posix() for p in images.paths] == ["cat/a.png", "cat/deep/b.jpg", "eel/c.PNG"]
    assert images.labels == [0, 0, 2] and images.labelled
    assert "1 image(s) directly in" in images.ignored[0]
    samples, classes = scan_image_folder(root)  # training's view
    assert classes == images.classes
    assert samples == [(str(p), c) for p, c in zip(images.paths, images.labels, strict=True)]
    exported = scan_folder(root)  # export's view
    assert (exported.paths, exported.labels, exported.classes) == (images.paths, images.labels, images.classes)


def test_flat_folder_and_label_file_layouts(tmp_path):
    flat = tmp_path / "flat"
    for i in range(3):
        _save(flat / f"img{i}.png", i)
    images = scan_images(flat)
    assert len(images) == 3 and images.labels == [-1] * 3 and not images.labelled
    with pytest.raises(UserError, match="flat folder of images without labels"):
        images.targets(10)
    with pytest.raises(UserError, match="no class sub-folders"):
        scan_image_folder(flat)

    labels = tmp_path / "val.txt"
    labels.write_text("# filename label\nimg2.png 7\nimg0.png,3\n\n")
    listed = scan_images(flat, labels)
    assert [p.name for p in listed.paths] == ["img2.png", "img0.png"] and listed.targets(10) == [7, 3]
    with pytest.raises(UserError, match="class index 7, out of range for a 5-class model"):
        listed.targets(5)
    labels.write_text("img0.png 1\nimg1.png one\n")
    with pytest.raises(UserError, match=r"val.txt:2: expected 'filename label'"):
        read_label_file(labels)
    labels.write_text("img0.png 1\nzzz.png 2\n")
    with pytest.raises(UserError, match="1 file.* not in .*zzz.png"):
        scan_images(flat, labels)
    with pytest.raises(UserError, match="does not exist"):
        scan_images(tmp_path / "nowhere")
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(UserError, match=r"no images .* class folders \(a\)"):
        scan_images(tmp_path / "empty")


# ---------------------------------------------------------------------------------------------------- labels
def test_synset_folders_get_imagenet_indices_for_any_subset():
    assert list(SYNSETS) == sorted(SYNSETS) and len(set(SYNSETS)) == 1000
    assert class_indices(["n02509815", "n03891251"], 1000) == [387, 703]  # not 0, 1
    assert [imagenet_classes()[i] for i in (387, 703)] == ["lesser panda", "park bench"]
    assert class_indices(list(SYNSETS), 1000) == list(range(1000))
    ten = sorted(SYNSETS[::100])
    assert class_indices(ten, 1000) == list(range(0, 1000, 100))
    assert class_indices(ten, 10) == list(range(10))  # a model fine-tuned on these 10 (e.g. Imagenette)


def test_own_classes_are_sorted_folders_when_they_cover_the_outputs():
    digits = [str(d) for d in range(10)]
    assert class_indices(digits, 10) == list(range(10))
    assert class_indices([f"c{i:04d}" for i in range(1000)], 1000) == list(range(1000))
    mixed_full = sorted(list(SYNSETS[:999]) + ["zebra_crossing"])
    assert class_indices(mixed_full, 1000) == list(range(1000))  # a 1000-class model of your own
    names = ["two", "zero", "one"]
    assert class_indices(["one", "two"], 3, class_names=names) == [2, 0]


@pytest.mark.parametrize(
    "folders, num_classes, names, message",
    [
        (["cat", "dog", "eel"], 1000, None, r"3 class folders .* 1000 outputs.*--classes FILE.*synset"),
        (["n02509815", "cats"], 1000, None, r"mixes ImageNet synset folders \(n02509815\) with other names \(cats\)"),
        (["0", "1", "2"], 10, None, "3 class folders .* 10 outputs"),
        ([str(d) for d in range(11)], 10, None, r"11 class folders \(0, 1, 2, ... \(11 in all\)\) but the model has"),
        (["a", "x"], 2, ["a", "b"], r"not among the model's 2 class names: x"),
        (["a"], 3, ["a", "b"], "2 class names for a 3-class model"),
    ],
)
def test_ambiguous_folders_are_refused_not_renumbered(folders, num_classes, names, message):
    with pytest.raises(UserError, match=message):
        class_indices(folders, num_classes, class_names=names)
