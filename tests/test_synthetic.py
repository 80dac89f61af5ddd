"""The procedural shapes set (mnv4.synthetic): deterministic from its seed, a valid ImageFolder, masks that add up."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

import mnv4
from mnv4.errors import UserError
from mnv4.images import scan_image_folder
from mnv4.synthetic import CHUNK, CLASSES, TRAIN_STREAM, ShapesStyle, render, split_images


def _digest(root) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*.png"))}


def test_same_seed_same_bytes_other_seed_other_images(tmp_path):
    a = mnv4.synthetic_shapes(tmp_path / "a", train=60, val=24, size=32, seed=3)
    b = mnv4.synthetic_shapes(tmp_path / "b", train=60, val=24, size=32, seed=3)
    c = mnv4.synthetic_shapes(tmp_path / "c", train=60, val=24, size=32, seed=4)
    assert _digest(a.root) == _digest(b.root)
    assert a.fingerprint == b.fingerprint != c.fingerprint
    assert set(_digest(a.root).values()).isdisjoint(_digest(c.root).values())


def test_an_image_does_not_depend_on_how_many_are_asked_for():
    full, full_labels = split_images(CHUNK + 40, 24, seed=0, stream=TRAIN_STREAM)
    part, part_labels = split_images(CHUNK + 40, 24, seed=0, stream=TRAIN_STREAM, start=CHUNK - 5)
    few, _ = split_images(7, 24, seed=0, stream=TRAIN_STREAM)
    np.testing.assert_array_equal(part, full[CHUNK - 5:])
    np.testing.assert_array_equal(part_labels, full_labels[CHUNK - 5:])
    np.testing.assert_array_equal(few, full[:7])


def test_an_imagefolder_every_command_reads_balanced_classes(tmp_path):
    shapes = mnv4.synthetic_shapes(tmp_path / "s", train=48, val=24, size=32)
    for split, count in (("train", 48), ("val", 24)):
        samples, classes = scan_image_folder(shapes.root / split)
        assert classes == sorted(CLASSES)
        assert len(samples) == count
        assert np.bincount([label for _, label in samples]).tolist() == [count // len(CLASSES)] * len(CLASSES)
    from PIL import Image

    with Image.open(samples[0][0]) as image:
        assert image.size == (32, 32) and image.mode == "RGB"


def test_idempotent_and_never_overwrites_something_else(tmp_path):
    first = mnv4.synthetic_shapes(tmp_path / "s", train=24, val=12, size=32)
    marker = (first.root / "shapes.json").stat().st_mtime_ns
    again = mnv4.synthetic_shapes(tmp_path / "s", train=24, val=12, size=32)
    assert again == first and (first.root / "shapes.json").stat().st_mtime_ns == marker
    with pytest.raises(UserError, match="another shapes set"):
        mnv4.synthetic_shapes(tmp_path / "s", train=24, val=12, size=32, seed=1)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not an empty folder"):
        mnv4.synthetic_shapes(tmp_path / "other", train=24, val=12)
    with pytest.raises(UserError, match="one image per class"):
        mnv4.synthetic_shapes(tmp_path / "few", train=5, val=12)


def test_layers_composite_to_the_image_and_the_target_is_visible():
    """Re-compositing the masks with solid colours reproduces an image rendered with solid fills and no noise, and
    the visible masks partition each pixel between the layers and the background."""
    style = ShapesStyle(textured=0.0, noise=0.0)
    scenes = render(np.arange(24) % len(CLASSES), 32, np.random.default_rng(0), style)
    visible = scenes.visible_masks()
    background = 1 - visible.sum(1)
    assert visible.min() >= 0 and background.min() >= -1e-5
    np.testing.assert_array_less(visible - 1e-6, scenes.masks)
    target = visible[np.arange(24), scenes.target]
    assert (target.reshape(24, -1).sum(1) > 10).all()  # > 10 pixels of every target show
    assert (scenes.classes[np.arange(24), scenes.target] == scenes.labels).all()
    # each layer of a solid scene is one colour: the image is the visible masks (and the background's share) times
    # one colour each, so a least-squares fit of those colours reproduces it up to 8-bit rounding
    image = scenes.images.astype(np.float64) / 255
    for i in range(6):
        weights = np.concatenate([background[i][None], visible[i]]).reshape(1 + visible.shape[1], -1).T
        colours, *_ = np.linalg.lstsq(weights, image[i].reshape(-1, 3), rcond=None)
        assert np.abs(weights @ colours - image[i].reshape(-1, 3)).max() < 1.5 / 255
