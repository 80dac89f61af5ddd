"""Dense-prediction backbones: ``output_stride`` 32 / 16 / 8 on every variant, and TF's ConvMediumSeg table.

What must hold: the dilation schedule is TF Model Garden's (checked conv by conv against a hand-written list), the
maps stop shrinking at the output stride, classification weights load strictly and unchanged (and round-trip back
to the same classifier), Mobile MQA keeps its K/V downsampling, and ConvMediumSeg's parameters and MACs equal a
count by hand from TF's table.
"""

import copy

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import mnv4
from mnv4.analysis import count_macs, count_params, profile_layers
from mnv4.deploy import deploy
from mnv4.errors import UserError
from mnv4.layers import make_divisible
from mnv4.model import row_geometry
from mnv4.specs import CONV_MEDIUM_SEG, MODEL_SPECS
from mnv4.testing import make_nondegenerate, relative_error

SIZE = (64, 96)  # non-square: an H/W mix-up shows


def _dilations(name: str, output_stride: int) -> list[list[int]]:
    return [[d for _, d in stage] for stage in row_geometry(MODEL_SPECS[name], output_stride)]


def test_dilation_schedule_is_tf_model_gardens():
    # Conv-M: stages of 1, 2, 8, 11 and 1 rows; the /16 stage starts at blocks.2, the /32 stage at blocks.3.
    # TF: once at the output stride, a strided row runs at stride 1; the first de-strided row already takes rate 2,
    # a later one keeps the rate before it and doubles it for the rows after.
    assert _dilations("mobilenetv4_conv_medium", 32) == [[1], [1] * 2, [1] * 8, [1] * 11, [1]]
    assert _dilations("mobilenetv4_conv_medium", 16) == [[1], [1] * 2, [1] * 8, [2] * 11, [2]]
    assert _dilations("mobilenetv4_conv_medium", 8) == [[1], [1] * 2, [2] * 8, [2] + [4] * 10, [4]]
    strides = [[s for s, _ in stage] for stage in row_geometry(MODEL_SPECS["mobilenetv4_conv_medium"], 8)]
    assert strides == [[2], [2, 1], [1] * 8, [1] * 11, [1]]
    with pytest.raises(UserError, match="output_stride must be one of"):
        mnv4.create_model("mobilenetv4_conv_small", output_stride=4)


def test_convs_carry_the_schedule_and_padding_keeps_the_size():
    model = mnv4.create_model("mobilenetv4_conv_medium", output_stride=8)
    seen = 0
    for name, m in model.named_modules():
        if not isinstance(m, nn.Conv2d) or not name.startswith("blocks."):
            continue
        stage, row = (int(p) for p in name.split(".")[1:3])
        k = m.kernel_size[0]
        expected = 1 if k == 1 else _dilations("mobilenetv4_conv_medium", 8)[stage][row]
        assert m.dilation == (expected, expected), name
        assert m.padding == (expected * (k - 1) // 2,) * 2, name
        if stage >= 2:
            assert m.stride == (1, 1), name
            seen += k > 1
    assert seen == 12 + 14  # the DW convs of the /16 and /32 stages: two per ExtraDW, one per ConvNext, FFN none


@pytest.mark.parametrize("name", mnv4.list_models())
def test_classification_weights_load_strictly_at_every_output_stride(name):
    classifier = mnv4.create_model(name)
    state = classifier.state_dict()
    for output_stride in (16, 8):
        dense = mnv4.create_model(name, output_stride=output_stride)
        dense.load_state_dict(state, strict=True)
        assert dense.output_stride == output_stride
        reductions = [min(r, output_stride) for r in (2, 4, 8, 16, 32)]
        assert dense.feature_info.reduction() == reductions
        assert dense.feature_info.channels() == classifier.feature_info.channels()


@pytest.mark.parametrize("name", ["mobilenetv4_hybrid_medium", "mobilenetv4_conv_blur_medium",
                                  "mobilenetv4_conv_medium_seg"])
@torch.no_grad()
def test_dense_maps_and_an_unchanged_classifier_after_a_round_trip(name):
    torch.manual_seed(0)
    classifier = make_nondegenerate(mnv4.create_model(name), input_size=SIZE, batch_size=2, passes=1)
    x = torch.randn(1, 3, *SIZE, generator=torch.Generator().manual_seed(1))
    logits = classifier(x)
    for output_stride in (16, 8):
        dense = mnv4.create_model(name, output_stride=output_stride, features_only=True).eval()
        dense.load_state_dict({k: v for k, v in classifier.state_dict().items()
                               if not k.startswith(("conv_head", "norm_head", "classifier"))}, strict=True)
        maps = dense(x)
        for fmap, info in zip(maps, dense.feature_info, strict=True):
            assert fmap.shape[-2:] == tuple(-(-s // info.reduction) for s in SIZE), (output_stride, info)
        assert maps[-1].shape[-2:] == (SIZE[0] // output_stride, SIZE[1] // output_stride)
        # BN folding (what every exporter starts from) keeps the dilation: exact in float64
        dense64 = copy.deepcopy(dense).double()
        assert relative_error(deploy(dense64)(x.double())[-1], dense64(x.double())[-1]) < 1e-10
        # the dense classifier's weights, back in an output-stride-32 model: the very same classifier
        dense_classifier = mnv4.create_model(name, output_stride=output_stride).eval()
        dense_classifier.load_state_dict(classifier.state_dict(), strict=True)
        assert not torch.allclose(dense_classifier(x), logits, atol=1e-3)  # dilation changes what it computes
        back = mnv4.create_model(name).eval()
        back.load_state_dict(dense_classifier.state_dict(), strict=True)
        assert torch.equal(back(x), logits)


def test_pretrained_file_loads_into_a_dense_backbone(tmp_path):
    torch.manual_seed(0)
    source = mnv4.create_model("mobilenetv4_conv_small")
    path = tmp_path / "small.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    dense = mnv4.create_model("mobilenetv4_conv_small", pretrained=path, output_stride=16, features_only=True)
    assert dense.pretrained_cfg["weights"] == str(path)
    for key, value in dense.state_dict().items():
        assert torch.equal(value, source.state_dict()[key]), key


def test_mobile_mqa_keeps_its_kv_downsampling_and_attends_over_the_larger_map():
    # Hybrid-M: 4 MQA blocks with K/V stride 2 in the /16 stage (blocks.2), 4 with K/V stride 1 in the /32 stage
    # (blocks.3). At a smaller output stride each block keeps its K/V stride, relative to the map it runs on.
    size = (128, 128)

    def attention(output_stride):
        model = mnv4.create_model("mobilenetv4_hybrid_medium", output_stride=output_stride)
        records = {r.name: r for r in profile_layers(model, size) if r.kind == "attention"}
        down = {name: m.stride for name, m in model.named_modules() if name.endswith("down_conv")}
        return records, down

    base, base_down = attention(32)
    for output_stride, (side16, side32) in {16: (8, 8), 8: (16, 16)}.items():
        records, down = attention(output_stride)
        assert down == base_down and set(down.values()) == {(2, 2)} and len(down) == 8
        for name, record in records.items():
            stage = int(name.split(".")[1])
            side = side16 if stage == 2 else side32  # query map side: 128 / (16 or 32), capped at the output stride
            kv_side = -(-side // (2 if stage == 2 else 1))
            heads, dim = 4, 64
            assert record.macs == heads * side * side * kv_side * kv_side * 2 * dim, name
    # at output stride 16 the /32-stage blocks attend over 4x the queries and 4x the keys: 16x the matmul MACs
    records16, _ = attention(16)
    assert records16["blocks.3.8.attn.matmuls"].macs == 16 * base["blocks.3.8.attn.matmuls"].macs
    assert records16["blocks.2.4.attn.matmuls"].macs == base["blocks.2.4.attn.matmuls"].macs


# ---------------------------------------------------------------------------------------------------- ConvMediumSeg
# TF Model Garden _mnv4_conv_medium_seg_block_specs, as (kind, start/kernel, mid, expand, out, stride) -- written
# out again here (not read from specs.py) so the count below is an independent one.
TF_CONV_MEDIUM_SEG = (
    [("fused", 3, 0, 4, 48, 2), ("uib", 3, 5, 4, 80, 2), ("uib", 3, 3, 2, 80, 1), ("uib", 3, 5, 6, 160, 2)]
    + [("uib", a, b, e, 160, 1) for a, b, e in ((3, 3, 4), (3, 3, 4), (3, 5, 4), (3, 3, 4), (3, 0, 4), (3, 0, 4))]
    + [("uib", 5, 5, 6, 256, 2)]
    + [("uib", a, b, e, 128, 1) for a, b, e in ((5, 5, 4), (3, 5, 4), (3, 5, 4), (3, 0, 4), (3, 5, 2), (5, 5, 4),
                                                (5, 0, 2))]
    + [("conv", 1, 0, 0, 448, 1)]
)


def _count_by_hand(size: int, num_classes: int = 1000) -> tuple[int, int]:
    """(params, MACs) of the table: weights of every conv, 2 per BN channel (weight, bias), the pooled head."""
    side, ch = size // 2, 32
    params, macs = 3 * 32 * 9 + 2 * 32, side * side * 32 * 3 * 9  # stem 3x3 s2
    for kind, a, b, e, out, s in TF_CONV_MEDIUM_SEG:
        if kind == "fused":
            mid = make_divisible(ch * e)
            side //= s
            params += ch * mid * a * a + 2 * mid + mid * out + 2 * out
            macs += side * side * (ch * mid * a * a + mid * out)
        elif kind == "conv":
            params += ch * out + 2 * out
            macs += side * side * ch * out
        else:
            mid = make_divisible(ch * e)
            if a:  # start DW: carries the stride only without a middle DW
                side //= 1 if b else s
                params, macs = params + ch * a * a + 2 * ch, macs + side * side * ch * a * a
            params, macs = params + ch * mid + 2 * mid, macs + side * side * ch * mid
            if b:
                side //= s
                params, macs = params + mid * b * b + 2 * mid, macs + side * side * mid * b * b
            params, macs = params + mid * out + 2 * out, macs + side * side * mid * out
        ch = out
    head = 448 * 1280 + 2 * 1280 + 1280 * num_classes + num_classes
    return params + head, macs + 448 * 1280 + 1280 * num_classes


def test_conv_medium_seg_params_and_macs_equal_a_count_by_hand():
    params, macs = _count_by_hand(512)
    assert (params, macs) == (5_021_816, 3_205_892_096)  # docs/segmentation.md quotes these
    model = mnv4.create_model("mobilenetv4_conv_medium_seg")
    assert count_params(model) == params
    assert count_macs(model, (512, 512)) == macs
    assert model.num_features == 448 and model.feature_info.channels() == [32, 48, 80, 160, 448]
    assert CONV_MEDIUM_SEG.act == "relu6" and any(isinstance(m, nn.ReLU6) for m in model.modules())
    assert not any(type(m) is nn.ReLU for m in model.modules())
    # the backbone alone (what a segmenter keeps): the pooled 448 -> 1280 head and the classifier go
    backbone = mnv4.create_model("mobilenetv4_conv_medium_seg", features_only=True)
    assert count_params(backbone) == params - (448 * 1280 + 2 * 1280 + 1280 * 1000 + 1000) == 3_164_816
