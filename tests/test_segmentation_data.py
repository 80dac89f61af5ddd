"""Segmentation data: mask folders and COCO files read, checked (one clear error each) and augmented jointly with
seeds that make every sample a function of (seed, epoch, index)."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from mnv4.errors import UserError
from mnv4.segmentation import (
    EvalTransform,
    SegmentationDataset,
    collate_segmentation,
    load_coco_masks,
    load_mask_folder,
    read_mask,
    train_transform,
    voc_palette,
)

PALETTE = voc_palette(4)
COLOURS = [[40, 40, 40]] + PALETTE[1:]  # image colours by class: none black, the colour of the crop padding
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def _labels(h: int, w: int, seed: int) -> np.ndarray:
    """Blocks of classes 0-3 (8 px squares) and a 255 boundary line: what a VOC mask looks like."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 4, size=(-(-h // 8), -(-w // 8)))
    labels = np.kron(blocks, np.ones((8, 8), dtype=np.int64))[:h, :w]
    labels[h // 2, :] = 255
    return labels


def _image_of(labels: np.ndarray) -> Image.Image:
    """An RGB image painted in each pixel's class colour (boundary: white), so its colours give the labels back."""
    colours = np.array(COLOURS + [[255, 255, 255]] * 252, dtype=np.uint8)
    return Image.fromarray(colours[labels])


def _palette_png(labels: np.ndarray, path):
    mask = Image.fromarray(labels.astype(np.uint8), mode="P")
    mask.putpalette([v for c in PALETTE for v in c] + [0] * (768 - 12))
    mask.save(path)


@pytest.fixture
def folder(tmp_path):
    """VOC-like: images/*.jpg + masks/*.png (palette), plus one nested pair, two sizes."""
    images, masks = tmp_path / "images", tmp_path / "masks"
    (images / "sub").mkdir(parents=True)
    (masks / "sub").mkdir(parents=True)
    for i, (name, size) in enumerate([("a", (40, 48)), ("b", (40, 48)), ("sub/c", (56, 40))]):
        labels = _labels(*size, seed=i)
        _image_of(labels).save(images / f"{name}.png")
        _palette_png(labels, masks / f"{name}.png")
    return images, masks


def test_mask_folder_pairs_by_relative_name_and_counts_class_pixels(folder):
    images, masks = folder
    data = load_mask_folder(images, masks, num_classes=4)
    assert [p[0].relative_to(images).as_posix() for p in data.pairs] == ["a.png", "b.png", "sub/c.png"]
    expected = sum(np.bincount(_labels(*s, seed=i)[_labels(*s, seed=i) != 255], minlength=4)
                   for i, s in enumerate([(40, 48), (40, 48), (56, 40)]))
    assert data.class_pixels == expected.tolist()
    image, labels = data.load(2)
    assert image.size == (40, 56) and np.array_equal(labels, _labels(56, 40, seed=2))


def test_mask_formats_palette_grey_16bit_bilevel_and_rgb_refused(tmp_path):
    labels = _labels(16, 24, seed=0)
    _palette_png(labels, tmp_path / "p.png")
    Image.fromarray(labels.astype(np.uint8), mode="L").save(tmp_path / "l.png")
    Image.fromarray(labels.astype(np.uint16)).save(tmp_path / "i16.png")
    Image.fromarray(labels > 1).save(tmp_path / "one.png")
    for name in ("p", "l", "i16"):
        assert np.array_equal(read_mask(tmp_path / f"{name}.png"), labels), name
    assert np.array_equal(read_mask(tmp_path / "one.png"), (labels > 1).astype(np.int64))
    _image_of(labels).save(tmp_path / "rgb.png")
    with pytest.raises(UserError, match=r"rgb\.png: a RGB image.*colour-coded labels"):
        read_mask(tmp_path / "rgb.png")


def test_split_file_selects_pairs_and_names_missing_ones(folder, tmp_path):
    images, masks = folder
    (images / "extra.png").write_bytes((images / "a.png").read_bytes())  # an image with no mask: fine with a split
    split = tmp_path / "train.txt"
    split.write_text("b\n\nsub/c\n")
    data = load_mask_folder(images, masks, 4, split=split)
    assert [p[1].name for p in data.pairs] == ["b.png", "c.png"]
    split.write_text("b\nnope\n")
    with pytest.raises(UserError, match=r"1 names in .*train\.txt without images under .*'nope'"):
        load_mask_folder(images, masks, 4, split=split)
    split.write_text("extra\n")
    with pytest.raises(UserError, match=r"1 names in .*train\.txt without masks under .*'extra'"):
        load_mask_folder(images, masks, 4, split=split)


@pytest.mark.parametrize("change, match", [
    (lambda i, m: (i / "extra.png").write_bytes((i / "a.png").read_bytes()),
     r"1 images under .* without a mask under .*'extra'.*split file"),
    (lambda i, m: (m / "orphan.png").write_bytes((m / "a.png").read_bytes()),
     r"1 masks under .* without an image under .*'orphan'"),
    (lambda i, m: (i / "a.jpg").write_bytes((i / "a.png").read_bytes()), r"have one name \('a'\)"),
    (lambda i, m: (m / "a.png").rename(m / "a.jpg"), r"1 masks are not PNG files .*a\.jpg.*lossless"),
    (lambda i, m: _palette_png(_labels(40, 40, seed=0), m / "a.png"),
     r"a\.png is 40x40 but its image .*a\.png is 48x40 \(width x height"),
    (lambda i, m: _palette_png(np.where(_labels(40, 48, seed=0) == 3, 7, _labels(40, 48, seed=0)), m / "a.png"),
     r"a\.png: labels 7 are not classes: with num_classes=4 a mask holds 0\.\.3, or 255"),
])
def test_folder_problems_are_one_clear_error(folder, change, match):
    images, masks = folder
    change(images, masks)
    with pytest.raises(UserError, match=match):
        load_mask_folder(images, masks, num_classes=4)


def test_mask_size_is_checked_against_the_exif_upright_image(tmp_path):
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir(), masks.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 48 wide x 32 high, shown rotated: 32 x 48
    Image.new("RGB", (48, 32)).save(images / "phone.jpg", exif=exif)
    _palette_png(np.zeros((48, 32), dtype=np.int64), masks / "phone.png")
    assert load_mask_folder(images, masks, 2).load(0)[0].size == (32, 48)
    _palette_png(np.zeros((32, 48), dtype=np.int64), masks / "phone.png")
    with pytest.raises(UserError, match="after EXIF rotation"):
        load_mask_folder(images, masks, 2)


# ---------------------------------------------------------------------------------------------------- COCO
def _rect(x0, y0, x1, y1):
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


@pytest.fixture
def coco(tmp_path):
    pytest.importorskip("pycocotools", reason="COCO masks need pycocotools (mnv4[detection])")
    from pycocotools import mask as coco_mask

    (tmp_path / "img").mkdir()
    Image.new("RGB", (64, 48), (90, 90, 90)).save(tmp_path / "img" / "one.jpg")
    Image.new("RGB", (32, 32)).save(tmp_path / "img" / "empty.jpg")
    crowd = np.zeros((48, 64), dtype=np.uint8, order="F")
    crowd[30:40, 40:60] = 1
    rle = coco_mask.encode(crowd)
    rle["counts"] = rle["counts"].decode()  # compressed RLE as JSON holds it
    ann = [
        {"id": 1, "image_id": 1, "category_id": 7, "bbox": [4, 4, 20, 16], "segmentation": _rect(4, 4, 24, 20)},
        {"id": 2, "image_id": 1, "category_id": 3, "bbox": [16, 8, 20, 20], "segmentation": _rect(16, 8, 36, 28)},
        {"id": 3, "image_id": 1, "category_id": 3, "bbox": [40, 30, 20, 10], "segmentation": rle, "iscrowd": 1},
        {"id": 4, "image_id": 1, "category_id": 9, "bbox": [0, 40, 10, 8], "segmentation": _rect(0, 40, 10, 47)},
    ]
    data = {"images": [{"id": 1, "file_name": "one.jpg", "width": 64, "height": 48},
                       {"id": 2, "file_name": "empty.jpg", "width": 32, "height": 32}],
            "annotations": ann,
            "categories": [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}, {"id": 9, "name": "bird"}]}
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    return path, tmp_path / "img", data


def test_coco_instances_become_semantic_masks(coco):
    path, images, _ = coco
    data = load_coco_masks(path, images)
    assert data.class_names == ["background", "cat", "dog", "bird"] and data.category_ids == [None, 3, 7, 9]
    labels = data.mask(0)
    assert labels.shape == (48, 64)
    assert (labels[6:18, 6:15] == 2).all()  # dog alone (category 7 -> label 2: ids in increasing order)
    assert (labels[22:27, 18:34] == 1).all()  # cat alone
    assert (labels[9:19, 17:23] == 255).all()  # dog and cat overlap: ignored (torchvision's reference)
    assert (labels[31:39, 41:59] == 255).all()  # crowd region: ignored
    assert (labels[42:46, 1:9] == 3).all() and (labels[0:3, :] == 0).all()
    assert (data.mask(1) == 0).all()  # an image without annotations: all background
    image, same = data.load(0)
    assert image.size == (64, 48) and np.array_equal(same, labels)


def test_coco_category_subset_order_and_crowd_as_label(coco):
    path, images, _ = coco
    data = load_coco_masks(path, images, categories=[9, 3], crowd="label")
    assert data.class_names == ["background", "bird", "cat"]
    labels = data.mask(0)
    assert (labels[6:8, 6:15] == 0).all()  # dog: not selected, so background; and no overlap with it any more
    assert (labels[9:19, 17:23] == 2).all() and (labels[31:39, 41:59] == 2).all() and (labels[42:46, 1:9] == 1).all()


def test_coco_problems_are_one_clear_error(coco, tmp_path):
    path, images, data = coco
    with pytest.raises(UserError, match=r"categories must be distinct ids .* got \[5\]"):
        load_coco_masks(path, images, categories=[5])
    with pytest.raises(UserError, match="crowd must be one of"):
        load_coco_masks(path, images, crowd="drop")
    data["annotations"][0]["segmentation"] = [[1, 2, 3]]
    path.write_text(json.dumps(data))
    with pytest.raises(UserError, match="annotation 1 of image 1 has no valid 'segmentation'"):
        load_coco_masks(path, images)


# ---------------------------------------------------------------------------------------------------- augmentation
def _denormalised_labels(image: torch.Tensor) -> np.ndarray:
    """Back from a normalised image painted by ``_image_of`` to class numbers (nearest palette colour)."""
    rgb = (image * torch.tensor(STD)[:, None, None] + torch.tensor(MEAN)[:, None, None]) * 255
    colours = torch.tensor(COLOURS + [[255, 255, 255]], dtype=torch.float32)
    nearest = ((rgb.permute(1, 2, 0)[:, :, None, :] - colours) ** 2).sum(-1).argmin(-1)
    return torch.where(nearest == 4, 255, nearest).numpy()


def test_training_samples_are_seeded_by_epoch_and_index_and_image_and_mask_move_together(folder):
    images, masks = folder
    data = load_mask_folder(images, masks, 4)
    dataset = SegmentationDataset(data, train_transform(32, MEAN, STD, scale_range=(0.5, 1.5)), seed=3)
    first = dataset[(0, 1)]
    dataset[(5, 0)]  # another sample in between draws nothing from the first one's stream
    again = dataset[(0, 1)]
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert first[0].shape == (3, 32, 32) and first[1].shape == (32, 32) and first[1].dtype == torch.int64
    assert not torch.equal(dataset[(1, 1)][0], first[0])  # another epoch, another crop
    assert not torch.equal(SegmentationDataset(data, dataset.transform, seed=4)[(0, 1)][0], first[0])
    agree, flipped, padded_ok = [], [], True
    for epoch in range(6):
        image, mask, *_ = dataset[(epoch, 2)]
        from_colours, mask = _denormalised_labels(image), mask.numpy()
        labelled = mask != 255
        agree.append((from_colours[labelled] == mask[labelled]).mean())
        labelled_flipped = mask[:, ::-1] != 255
        flipped.append((from_colours[labelled_flipped] == mask[:, ::-1][labelled_flipped]).mean())
        padding = (image == ((0 - torch.tensor(MEAN)) / torch.tensor(STD))[:, None, None]).all(0).numpy()
        padded_ok &= bool((mask[padding] == 255).all())
    # The mask is resized by nearest neighbour, the image bilinearly (8 px class blocks, scaled by 0.5-1.5): they
    # agree but along class edges. A mask flipped against its image (the control) agrees by chance only.
    assert min(agree) > 0.75 and np.mean(agree) > 0.8 > 0.5 > np.mean(flipped) and padded_ok, (agree, flipped)


def test_eval_samples_keep_the_mask_at_its_size_and_collate_stacks_what_it_can(folder):
    images, masks = folder
    data = load_mask_folder(images, masks, 4)
    dataset = SegmentationDataset(data, EvalTransform(24, MEAN, STD), replace_bad=False)
    image, mask, index, aug_epoch, bad = dataset[2]
    assert image.shape == (3, 33, 24) and mask.shape == (56, 40) and (index, aug_epoch, bad) == (2, -1, ())
    assert torch.equal(mask, torch.from_numpy(_labels(56, 40, seed=2)))
    same = collate_segmentation([dataset[0], dataset[1]])
    assert same[0].shape == (2, 3, 24, 28) and same[1].shape == (2, 40, 48) and same[2].tolist() == [0, 1]
    mixed = collate_segmentation([dataset[0], dataset[2]])
    assert isinstance(mixed[0], list) and [m.shape for m in mixed[1]] == [(40, 48), (56, 40)]


def test_undecodable_image_is_replaced_in_training_and_an_error_or_counted_in_evaluation(folder):
    from mnv4.engine.metrics import BadFileLog
    from mnv4.segmentation import confusion_over

    images, masks = folder
    data = load_mask_folder(images, masks, 4)
    (images / "b.png").write_bytes((images / "b.png").read_bytes()[:60])  # truncated after the header was read
    train = SegmentationDataset(data, train_transform(32, MEAN, STD))
    image, mask, index, _, bad = train[(0, 1)]
    assert index == 2 and len(bad) == 1 and bad[0][0].endswith("b.png")
    # evaluation never scores another image against b's mask: the sample comes back empty, collate leaves it out
    evaluation = SegmentationDataset(data, EvalTransform(None, MEAN, STD), replace_bad=False)
    image, mask, index, _, bad = evaluation[1]
    assert image is None and mask is None and index == 1 and bad[0][0].endswith("b.png")
    batch = collate_segmentation([evaluation[0], evaluation[1], evaluation[2]])
    assert len(batch[0]) == 2 and batch[2].tolist() == [0, 2] and len(batch[3]) == 1

    class Background(torch.nn.Module):  # predicts class 0 everywhere
        def forward(self, x):
            return {"out": torch.zeros(x.shape[0], 4, *x.shape[2:]).index_fill_(1, torch.tensor([0]), 1.0)}

    loader = [collate_segmentation([evaluation[i]]) for i in range(len(evaluation))]
    with pytest.raises(UserError, match=r"cannot evaluate: .*b\.png is not a readable image"):
        confusion_over(Background(), loader, 4)
    log = BadFileLog("skipped")
    matrix = confusion_over(Background(), loader, 4, bad_log=log)
    assert log.count == 1 and matrix.counts.sum() == sum((evaluation[i][1] != 255).sum() for i in (0, 2))
