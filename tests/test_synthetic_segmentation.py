"""The generated segmentation set (mnv4.synthetic.synthetic_segmentation): deterministic from its seed, the mask-folder
layout `mnv4 segment train` reads, and masks that label each pixel with what covers most of it."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from mnv4.errors import UserError
from mnv4.segmentation import load_mask_folder
from mnv4.synthetic import (
    CHUNK,
    CLASSES,
    SEG_TRAIN_STREAM,
    SEGMENTATION_SHAPES,
    SEGMENTATION_STYLE,
    render,
    scene_labels,
    segmentation_split,
    synthetic_segmentation,
)


def _digest(root) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_other_images(tmp_path):
    a = synthetic_segmentation(tmp_path / "a", train=12, val=4, size=32, seed=3)
    b = synthetic_segmentation(tmp_path / "b", train=12, val=4, size=32, seed=3)
    c = synthetic_segmentation(tmp_path / "c", train=12, val=4, size=32, seed=4)
    assert _digest(a.root) == _digest(b.root)
    assert a.fingerprint == b.fingerprint != c.fingerprint
    images = {k: v for k, v in _digest(a.root).items() if "/images/" in k}
    assert set(images.values()).isdisjoint(_digest(c.root).values())


def test_an_image_and_its_mask_do_not_depend_on_how_many_are_asked_for():
    full_images, full_masks = segmentation_split(CHUNK + 6, 32, seed=0, stream=SEG_TRAIN_STREAM)
    part_images, part_masks = segmentation_split(CHUNK + 6, 32, seed=0, stream=SEG_TRAIN_STREAM, start=CHUNK - 3)
    np.testing.assert_array_equal(part_images, full_images[CHUNK - 3:])
    np.testing.assert_array_equal(part_masks, full_masks[CHUNK - 3:])


def test_a_mask_folder_that_segment_train_reads(tmp_path):
    data = synthetic_segmentation(tmp_path / "s", train=24, val=6, size=32)
    folder = load_mask_folder(data.images("train"), data.masks("train"), data.num_classes)
    assert len(folder) == 24 and data.num_classes == 6
    assert len(load_mask_folder(data.images("val"), data.masks("val"), data.num_classes)) == 6
    pixels = np.asarray(folder.class_pixels)
    assert pixels[0] > pixels[1:].max() and (pixels[1:] > 0).all()  # background the most, every shape present
    assert data.classes_file.read_text().split() == ["background", *SEGMENTATION_SHAPES]
    from PIL import Image

    with Image.open(folder.pairs[0][1]) as mask:
        assert mask.mode == "P" and mask.size == (32, 32)  # VOC-style palette PNG: the values are the labels
    every = synthetic_segmentation(tmp_path / "all", train=24, val=2, size=32, shapes=CLASSES)
    assert every.num_classes == 13
    assert load_mask_folder(every.images("train"), every.masks("train"), 13).class_pixels[1:].count(0) <= 4
    with pytest.raises(UserError, match="shapes must be distinct names"):
        synthetic_segmentation(tmp_path / "bad", train=4, val=2, size=32, shapes=("disc", "blob"))


def test_labels_are_the_largest_visible_share_and_bars_are_background():
    scenes = render(np.arange(24) % len(CLASSES), 32, np.random.default_rng(1), SEGMENTATION_STYLE)
    labels = scene_labels(scenes).astype(np.int64)  # all twelve shapes: shape class c is label c + 1
    visible = scenes.visible_masks()
    background = 1 - visible.sum(1)
    # where one object covers a pixel (nearly) alone, the label is its class + 1; bare background is 0
    for j in range(visible.shape[1]):
        solid = visible[:, j] > 0.99
        expected = scenes.classes[:, j, None, None] + 1  # -1 (the bar, empty slots) -> 0
        assert (labels[solid] == np.broadcast_to(expected, labels.shape)[solid]).all()
    assert (labels[background > 0.99] == 0).all()
    bar = visible[:, -1] > 0.99  # the occluder bar is no shape: background
    assert bar.any() and (labels[bar] == 0).all()
    shown = (labels == (scenes.labels + 1)[:, None, None]).reshape(24, -1).sum(1)
    assert (shown >= 10).all()  # every large shape labels at least 10 pixels of its scene
    # a subset of the shapes: labels 1..k in the subset's order, shapes outside it would be background
    subset = ("star", "disc")
    relabelled = scene_labels(scenes, subset).astype(np.int64)
    for k, name in enumerate(subset, start=1):
        assert ((relabelled == k) == (labels == CLASSES.index(name) + 1)).all()
    assert ((relabelled == 0) == ~np.isin(labels, [CLASSES.index(n) + 1 for n in subset])).all()


def test_the_large_shape_cycles_through_the_shapes_and_the_others_are_among_them():
    images, labels = segmentation_split(10, 32, seed=0, stream=SEG_TRAIN_STREAM, shapes=("ring", "tee"))
    assert images.shape == (10, 32, 32, 3) and set(np.unique(labels)) <= {0, 1, 2}
    largest = [np.bincount(m.ravel(), minlength=3)[1:].argmax() + 1 for m in labels]
    assert sum(largest[i] == 1 + i % 2 for i in range(10)) >= 8  # the large shape is mostly the most shown


def test_idempotent_and_never_overwrites_something_else(tmp_path):
    first = synthetic_segmentation(tmp_path / "s", train=4, val=2, size=32)
    marker = (first.root / "segmentation.json").stat().st_mtime_ns
    assert synthetic_segmentation(tmp_path / "s", train=4, val=2, size=32) == first
    assert (first.root / "segmentation.json").stat().st_mtime_ns == marker
    with pytest.raises(UserError, match="another segmentation set"):
        synthetic_segmentation(tmp_path / "s", train=4, val=2, size=32, seed=1)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not an empty folder"):
        synthetic_segmentation(tmp_path / "other", train=4, val=2)
    with pytest.raises(UserError, match="size must be >= 32"):
        synthetic_segmentation(tmp_path / "tiny", train=4, val=2, size=16)
