"""Segmenters on torchvision's heads, the spec stored with the weights, the loss, one confusion matrix for every
metric (checked against a hand-computed case and across two processes), evaluation and prediction files."""

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file
from torch import nn
from torchvision.models.segmentation.deeplabv3 import DeepLabHead
from torchvision.models.segmentation.fcn import FCNHead
from torchvision.models.segmentation.lraspp import LRASPPHead

import mnv4
from mnv4.analysis import count_params
from mnv4.errors import UserError
from mnv4.segmentation import (
    ConfusionMatrix,
    SegmenterSpec,
    create_segmenter,
    deeplabv3_mobilenetv4,
    evaluate_segmenter,
    load_mask_folder,
    load_segmenter,
    lraspp_mobilenetv4,
    read_mask,
    save_segmenter,
    segment,
    segmentation_loss,
    write_predictions,
)
from mnv4.testing import make_nondegenerate

SIZE = (64, 96)


# ---------------------------------------------------------------------------------------------------- models
def _head_inputs(model: nn.Module, x: torch.Tensor) -> dict:
    """The named maps the backbone hands to torchvision's head."""
    with torch.no_grad():
        return model.backbone(x)


def test_lraspp_reads_the_stride_8_map_and_the_last_map_at_output_stride_16():
    model = lraspp_mobilenetv4("mobilenetv4_conv_small", num_classes=5).eval()
    x = torch.randn(1, 3, *SIZE)
    maps = _head_inputs(model, x)
    assert list(maps) == ["low", "high"]
    assert maps["low"].shape == (1, 64, 8, 12) and maps["high"].shape == (1, 960, 4, 6)  # /8 and /16 (not /32)
    assert isinstance(model.classifier, LRASPPHead)
    with torch.no_grad():
        out = model(x)
    assert list(out) == ["out"] and out["out"].shape == (1, 5, *SIZE)
    backbone = mnv4.create_model("mobilenetv4_conv_small", features_only=True, out_indices=(2, 4))
    assert count_params(model) == count_params(backbone) + count_params(LRASPPHead(64, 960, 5, 128))


def _aspp_rates(model: nn.Module) -> list[int]:
    aspp = model.classifier[0].convs.modules()
    return [m.dilation[0] for m in aspp if isinstance(m, nn.Conv2d) and m.dilation[0] > 1]


def test_deeplabv3_with_aux_head_and_rates_by_output_stride():
    model = deeplabv3_mobilenetv4("mobilenetv4_conv_medium", num_classes=4, output_stride=8, aux=True).eval()
    maps = _head_inputs(model, torch.randn(1, 3, *SIZE))
    assert list(maps) == ["aux", "out"] and maps["out"].shape == (1, 960, 8, 12) and maps["aux"].shape[1] == 80
    assert isinstance(model.classifier, DeepLabHead) and isinstance(model.aux_classifier, FCNHead)
    assert _aspp_rates(model) == [12, 24, 36]  # DeepLabV3 at output stride 8
    with torch.no_grad():
        out = model(torch.randn(2, 3, *SIZE))
    assert out["out"].shape == out["aux"].shape == (2, 4, *SIZE)
    plain = deeplabv3_mobilenetv4("mobilenetv4_conv_medium", num_classes=4)
    assert _aspp_rates(plain) == [6, 12, 18] and plain.aux_classifier is None


def test_pretrained_backbone_weights_load_unchanged(tmp_path):
    torch.manual_seed(0)
    source = mnv4.create_model("mobilenetv4_conv_small", num_classes=10)
    path = tmp_path / "small.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    model = lraspp_mobilenetv4("mobilenetv4_conv_small", pretrained_backbone=path)
    body = model.backbone.body.state_dict()
    assert body and all(torch.equal(v, source.state_dict()[k]) for k, v in body.items())


def test_spec_round_trip_through_safetensors(tmp_path):
    spec = SegmenterSpec("deeplabv3", "mobilenetv4_conv_small", num_classes=3, aux=True, image_size=64,
                         classes=["bg", "cat", "dog"])
    assert spec.mean == [0.485, 0.456, 0.406] and spec.colours() == [[0, 0, 0], [128, 0, 0], [0, 128, 0]]
    torch.manual_seed(0)
    model = make_nondegenerate(create_segmenter(spec), input_size=SIZE, batch_size=2, passes=1)
    path = save_segmenter(model, spec, tmp_path / "seg.safetensors")
    loaded, loaded_spec = load_segmenter(path)
    assert loaded_spec == spec and not loaded.training
    x = torch.randn(1, 3, *SIZE)
    with torch.no_grad():
        assert torch.equal(loaded(x)["out"], model.eval()(x)["out"])


@pytest.mark.parametrize("kwargs, match", [
    ({"arch": "fcn"}, "architecture must be one of"),
    ({"num_classes": 1}, "num_classes must be an int >= 2"),
    ({"num_classes": 300}, r"ignore_index \(255\) must be an int >= num_classes"),
    ({"output_stride": 4}, "output_stride must be one of"),
    ({"aux": True}, "aux .* is DeepLabV3's"),
    ({"classes": ["a", "b"]}, "2 class names for 21 classes"),
    ({"palette": [[0, 0, 0]] * 21 + [[1, 2, 3]]}, "palette must give 21 RGB triples"),
    ({"backbone": "mobilenetv4_conv_smal"}, "unknown model"),
])
def test_bad_specs_are_one_clear_error(kwargs, match):
    with pytest.raises(UserError, match=match):
        SegmenterSpec(**kwargs)


def test_load_segmenter_refuses_what_it_cannot_rebuild(tmp_path):
    with pytest.raises(UserError, match="do not exist"):
        load_segmenter(tmp_path / "none.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(UserError, match="is not a safetensors file"):
        load_segmenter(tmp_path / "junk.safetensors")
    save_file({"w": torch.zeros(1)}, str(tmp_path / "bare.safetensors"))
    with pytest.raises(UserError, match="has no segmenter description"):
        load_segmenter(tmp_path / "bare.safetensors")
    spec = SegmenterSpec(backbone="mobilenetv4_conv_small", num_classes=3)
    save_segmenter(create_segmenter(replace(spec, num_classes=4)), spec, tmp_path / "other.safetensors")
    with pytest.raises(UserError, match="the weights do not fit the segmenter its metadata describes"):
        load_segmenter(tmp_path / "other.safetensors")


# ---------------------------------------------------------------------------------------------------- loss
def test_loss_is_cross_entropy_over_labelled_pixels_plus_half_the_aux():
    torch.manual_seed(0)
    out, aux = torch.randn(2, 3, 4, 5, requires_grad=True), torch.randn(2, 3, 4, 5)
    target = torch.randint(0, 3, (2, 4, 5))
    target[0, 0] = 255
    labelled = target != 255
    by_hand = -F.log_softmax(out, 1).gather(1, target.clamp(max=2)[:, None])[:, 0][labelled].mean()
    assert torch.allclose(segmentation_loss({"out": out}, target), by_hand)
    aux_by_hand = -F.log_softmax(aux, 1).gather(1, target.clamp(max=2)[:, None])[:, 0][labelled].mean()
    assert torch.allclose(segmentation_loss({"out": out, "aux": aux}, target), by_hand + 0.5 * aux_by_hand)
    nothing = segmentation_loss({"out": out}, torch.full_like(target, 255))
    nothing.backward()
    assert nothing.item() == 0.0 and torch.equal(out.grad, torch.zeros_like(out))


# ---------------------------------------------------------------------------------------------------- metrics
# 5 classes; class 3 is in neither truth nor prediction (NaN, out of the mean); class 4 is predicted, never true.
TARGET = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 1]])
PREDICTED = torch.tensor([[0, 4, 1, 1], [2, 0, 0, 2]])


def test_confusion_matrix_metrics_against_a_hand_computed_case():
    matrix = ConfusionMatrix(5)
    matrix.update(PREDICTED, TARGET)
    # scored pixels (truth, prediction): (0,0) (0,4) (1,1) (1,1) (2,2) (2,0) (1,2); the 255 pixel is not scored
    expected = torch.zeros(5, 5, dtype=torch.int64)
    for t, p in [(0, 0), (0, 4), (1, 1), (1, 1), (2, 2), (2, 0), (1, 2)]:
        expected[t, p] += 1
    assert torch.equal(matrix.counts, expected)
    m = matrix.compute()
    # IoU = TP / (TP + FP + FN): class 0: 1 / (2 + 2 - 1); class 1: 2 / (3 + 2 - 2); class 2: 1 / (2 + 2 - 1);
    # class 3: 0 / 0; class 4: 0 / (0 + 1 - 0)
    assert m.iou[:3] == pytest.approx([1 / 3, 2 / 3, 1 / 3]) and math.isnan(m.iou[3]) and m.iou[4] == 0.0
    assert m.miou == pytest.approx((1 / 3 + 2 / 3 + 1 / 3 + 0) / 4) and m.score == m.miou
    assert m.pixel_accuracy == pytest.approx(4 / 7) and m.pixels == 7
    assert m.class_accuracy[:3] == pytest.approx([1 / 2, 2 / 3, 1 / 2])
    assert m.mean_class_accuracy == pytest.approx(5 / 9)
    assert "mIoU 33.33" in m.table() and "class 3         - " in m.table()
    # counts are sums: two halves add up to the whole
    halves = ConfusionMatrix(5), ConfusionMatrix(5)
    halves[0].update(PREDICTED[:1], TARGET[:1])
    halves[1].update(PREDICTED[1:], TARGET[1:])
    assert torch.equal(halves[0].counts + halves[1].counts, matrix.counts)
    with pytest.raises(UserError, match=r"target labels must be 0\.\.4 or 255"):
        matrix.update(PREDICTED, TARGET + 5 * (TARGET == 1))


def test_confusion_matrix_sums_over_two_processes(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_two_rank_confusion, args=(str(tmp_path / "rendezvous"),), nprocs=2, join=True)


def _two_rank_confusion(rank, rendezvous):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=2)
    try:
        matrix = ConfusionMatrix(5)
        matrix.update(PREDICTED[rank : rank + 1], TARGET[rank : rank + 1])  # each rank scores one row
        whole = ConfusionMatrix(5)
        whole.update(PREDICTED, TARGET)
        assert torch.equal(matrix.all_reduce().counts, whole.counts)
    finally:
        dist.destroy_process_group()


# -------------------------------------------------------------------------------------------------- evaluate, predict
class Oracle(nn.Module):
    """A 'segmenter' whose logits are the classes painted into the input's red channel (class c: red = c / 4),
    so its predictions are known: it reproduces any mask written into an image that way."""

    def __init__(self, spec: SegmenterSpec, shift: int = 0):
        super().__init__()
        self.spec, self.shift = spec, shift

    def forward(self, x):
        red = x[:, 0] * self.spec.std[0] + self.spec.mean[0]
        classes = ((red * 4).round().long() + self.shift) % self.spec.num_classes
        return {"out": F.one_hot(classes, self.spec.num_classes).permute(0, 3, 1, 2).float() * 10}


def _painted_folder(tmp_path, sizes):
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir(), masks.mkdir()
    rng = np.random.default_rng(0)
    truth = []
    for i, (h, w) in enumerate(sizes):
        labels = np.kron(rng.integers(0, 4, size=(h // 8, w // 8)), np.ones((8, 8), dtype=np.int64))
        labels[0, :] = 255
        red = np.where(labels == 255, 0, labels * 64).astype(np.uint8)
        Image.fromarray(np.stack([red, red * 0, red * 0], -1)).save(images / f"{i}.png")
        Image.fromarray(labels.astype(np.uint8), mode="L").save(masks / f"{i}.png")
        truth.append(labels)
    return load_mask_folder(images, masks, 4), truth


def test_evaluate_scores_at_each_images_own_size_over_batches_of_equal_sizes(tmp_path):
    data, truth = _painted_folder(tmp_path, [(48, 56), (48, 56), (64, 48)])
    spec = SegmenterSpec(num_classes=4, backbone="mobilenetv4_conv_small", image_size=32)
    perfect = evaluate_segmenter(Oracle(spec), data, spec, batch_size=3, resize=False)
    assert perfect.miou == 1.0 and perfect.pixel_accuracy == 1.0
    assert perfect.pixels == sum(int((t != 255).sum()) for t in truth)
    # every class predicted as the next one: all wrong, IoU 0 for the classes that occur
    wrong = evaluate_segmenter(Oracle(spec, shift=1), data, spec, batch_size=2, resize=False)
    assert wrong.miou == 0.0 and wrong.pixel_accuracy == 0.0
    # resized to a shorter side of 32 and back: 8 px blocks survive but along their edges
    resized = evaluate_segmenter(Oracle(spec), data, replace(spec, image_size=32), batch_size=3)
    assert 0.8 < resized.pixel_accuracy < 1.0 and resized.pixels == perfect.pixels
    with pytest.raises(UserError, match="has 4 classes .* the segmenter 5"):
        evaluate_segmenter(Oracle(spec), data, SegmenterSpec(num_classes=5, backbone="mobilenetv4_conv_small"))


def test_predict_writes_raw_masks_and_overlays_and_survives_a_bad_file(tmp_path):
    data, truth = _painted_folder(tmp_path, [(32, 40), (48, 32)])
    spec = SegmenterSpec(num_classes=4, backbone="mobilenetv4_conv_small", image_size=32)
    paths = [p[0] for p in data.pairs]
    (tmp_path / "broken.jpg").write_bytes(b"no image")
    results = segment(Oracle(spec), spec, [*paths, tmp_path / "broken.jpg"], resize=False)
    assert [r.ok for r in results] == [True, True, False] and "broken.jpg" in results[2].error
    expected = [np.where(t == 255, 0, t) for t in truth]  # the painted boundary row is red 0: class 0
    assert all(np.array_equal(r.mask, e) for r, e in zip(results, expected, strict=False))
    written = write_predictions(results, spec, tmp_path / "out")
    assert [p.name for p in written] == ["0_mask.png", "0_overlay.png", "1_mask.png", "1_overlay.png"]
    assert np.array_equal(read_mask(written[0]), expected[0])  # class numbers, readable as a mask again
    assert Image.open(written[0]).getpalette()[3:6] == [128, 0, 0]  # VOC colours for viewing
    drawn = np.asarray(Image.open(written[1]))
    source = np.asarray(Image.open(paths[0]))
    background = expected[0] == 0
    assert drawn.shape == source.shape
    assert np.array_equal(drawn[background], source[background])  # black-coloured class 0: left unpainted
    assert not np.array_equal(drawn[~background], source[~background])
    assert results[0].class_fractions(spec.class_names())
