"""The family's structure and API: counts, MACs, export, features, timm-style methods, input checks.

(timm's own model tests -- forward, backward, cfgs, TorchScript, FX, ... on every variant -- are in
test_timm_suite.py.)"""

import subprocess
import sys
from collections import OrderedDict

import pytest
import torch

import mnv4
from mnv4.analysis import count_params, profile_layers
from mnv4.errors import UserError
from mnv4.specs import EXTRA_MODELS, PAPER_MODELS

ALL = mnv4.list_models()
TIMM_MODELS = [spec.name for spec in PAPER_MODELS + EXTRA_MODELS]  # the variants timm has (not TF's ConvMediumSeg)

# The released models (timm = TF Model Garden definitions), not the paper's Tab. 6 counts, which are 0.5-1.9 M lower
# for M/L; timm's published counts agree: 3.77 / 9.72 / 32.59 / 11.07 / 37.76 M.
PAPER_PARAMS = {
    "mobilenetv4_conv_small": 3_774_024,
    "mobilenetv4_conv_medium": 9_715_512,
    "mobilenetv4_conv_large": 32_590_864,
    "mobilenetv4_hybrid_medium": 11_074_648,
    "mobilenetv4_hybrid_large": 37_764_624,
}
# GMACs at native resolution, counted by torch's FlopCounterMode on timm's models (convs + linears; SDPA is not
# counted there). Paper Tab. 6: 0.2 / 1.0 / 5.9 / 1.2 / 7.2 G.
SPEC_GMACS = {
    "mobilenetv4_conv_small": (224, 0.186),
    "mobilenetv4_conv_medium": (256, 1.080),
    "mobilenetv4_conv_large": (384, 6.376),
    "mobilenetv4_hybrid_medium": (256, 1.229),
    "mobilenetv4_hybrid_large": (384, 7.372),
}
# Channels of the five feature levels (reductions 2, 4, 8, 16, 32): the stem, the last layer at each stride and the
# 960-channel 1x1 conv of paper Tabs. 11-15 (= timm's feature_info).
FEATURE_CHANNELS = {
    "mobilenetv4_conv_small": [32, 32, 64, 96, 960],
    "mobilenetv4_conv_medium": [32, 48, 80, 160, 960],
    "mobilenetv4_conv_large": [24, 48, 96, 192, 960],
    "mobilenetv4_hybrid_medium": [32, 48, 80, 160, 960],
    "mobilenetv4_hybrid_large": [24, 48, 96, 192, 960],
}


def test_registry_lists_the_whole_family():
    assert len(ALL) == 13 and len(TIMM_MODELS) == 12 and set(ALL) - set(TIMM_MODELS) == {"mobilenetv4_conv_medium_seg"}
    assert mnv4.list_models("*hybrid*") == [
        "mobilenetv4_hybrid_large", "mobilenetv4_hybrid_large_075",
        "mobilenetv4_hybrid_medium", "mobilenetv4_hybrid_medium_075",
    ]
    assert mnv4.list_models("nothing*") == []


@pytest.mark.parametrize("name", sorted(PAPER_PARAMS))
def test_paper_model_param_counts_are_exact(name):
    assert count_params(mnv4.create_model(name)) == PAPER_PARAMS[name]


def test_extra_param_counts_equal_timm(timm):
    for name in TIMM_MODELS:
        if name not in PAPER_PARAMS:
            assert count_params(mnv4.create_model(name)) == count_params(timm.create_model(name)), name


def test_head_params_are_shared_by_all_models():
    for name in PAPER_PARAMS:
        m = mnv4.create_model(name)
        assert count_params(m.conv_head) + count_params(m.norm_head) == 1_231_360
        assert count_params(m.classifier) == 1_281_000


@pytest.mark.parametrize("name", sorted(SPEC_GMACS))
def test_macs_within_one_percent_of_spec(name):
    res, gmacs = SPEC_GMACS[name]
    prof = profile_layers(mnv4.create_model(name), (res, res))
    conv_linear = sum(p.macs for p in prof if p.kind != "attention")
    assert abs(conv_linear / 1e9 - gmacs) / gmacs < 0.01
    attention = sum(p.macs for p in prof if p.kind == "attention")
    assert (attention > 0) == ("hybrid" in name)


def test_mac_count_agrees_with_torch_flop_counter():
    from torch.utils.flop_counter import FlopCounterMode

    for name in ("mobilenetv4_hybrid_medium", "mobilenetv4_conv_blur_medium"):
        model = mnv4.create_model(name).eval().set_attention_impl("math")  # SDPA is not always counted by torch
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            model(torch.zeros(1, 3, 96, 128))
        assert sum(p.macs for p in profile_layers(model, (96, 128))) == counter.get_total_flops() // 2


def test_attention_macs_by_hand():
    # Hybrid-M /16 block at 256 px: 16x16 queries, kv stride 2 -> 8x8 keys, 4 heads, d = 64: QK^T + AV.
    model = mnv4.create_model("mobilenetv4_hybrid_medium")
    prof = [p for p in profile_layers(model, (256, 256)) if p.kind == "attention"]
    assert len(prof) == 8
    assert prof[0].macs == 4 * 256 * 64 * (64 + 64)
    assert prof[-1].macs == 4 * 64 * 64 * (64 + 64)  # /32: 8x8 queries and keys, no downsampling


@pytest.mark.parametrize("name", ALL)
def test_torch_export(name):
    model = mnv4.create_model(name).eval()
    x = torch.randn(1, 3, 64, 64)
    exported = torch.export.export(model, (x,))
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(x), model(x))


@pytest.mark.parametrize("name", sorted(FEATURE_CHANNELS))
def test_features_only_gives_five_levels(name):
    model = mnv4.create_model(name, features_only=True).eval()
    assert model.feature_info.channels() == FEATURE_CHANNELS[name]
    assert model.feature_info.reduction() == [2, 4, 8, 16, 32]
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 64, 96))
    assert [f.shape[1] for f in feats] == FEATURE_CHANNELS[name]
    assert [(f.shape[2], f.shape[3]) for f in feats] == [(64 // r, 96 // r) for r in (2, 4, 8, 16, 32)]
    assert not any(k.startswith(("conv_head", "norm_head", "classifier")) for k in model.state_dict())


def test_out_indices_select_levels_and_accept_negatives():
    model = mnv4.create_model("mobilenetv4_conv_small", features_only=True, out_indices=(1, -1)).eval()
    assert model.feature_info.reduction() == [4, 32]
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 64, 64))
    assert [f.shape[1] for f in feats] == [32, 960]


def test_widths_and_head_api():
    model = mnv4.create_model("mobilenetv4_hybrid_medium").eval()
    assert model.num_features == 960 and model.head_hidden_size == 1280
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape == (2, 960, 2, 2)
        assert model.forward_head(feats, pre_logits=True).shape == (2, 1280)
        assert model.forward_head(feats).shape == (2, 1000)
    model.reset_classifier(7)
    assert model.get_classifier().out_features == 7
    with torch.no_grad():
        assert model(x).shape == (2, 7)
    model.reset_classifier(0)
    with torch.no_grad():
        assert model(x).shape == (2, 1280)


def test_num_classes_in_chans_and_rates():
    model = mnv4.create_model("mobilenetv4_conv_small", num_classes=5, in_chans=1, drop_rate=0.3, drop_path_rate=0.1)
    assert model.conv_stem.in_channels == 1
    rates = [b.drop_path.p for stage in model.blocks for b in stage if hasattr(getattr(b, "drop_path", None), "p")]
    assert rates and max(rates) < 0.1 and rates == sorted(rates)  # linear in block index, below the peak
    model.train()
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 5)


def test_drop_path_only_on_residual_branches():
    model = mnv4.create_model("mobilenetv4_hybrid_medium", drop_path_rate=0.2)
    for stage in model.blocks:
        for block in stage:
            if hasattr(block, "drop_path"):
                assert hasattr(block.drop_path, "p") == (block.has_skip and block is not model.blocks[0][0])


def test_uib_instantiations_are_one_class():
    model = mnv4.create_model("mobilenetv4_conv_medium")
    kinds = {b.kind for stage in model.blocks for b in stage if isinstance(b, mnv4.blocks.UniversalInvertedBottleneck)}
    assert kinds == {"ExtraDW", "ConvNext", "FFN"}
    small = mnv4.create_model("mobilenetv4_conv_small")
    assert small.blocks[2][1].kind == "IB"
    # a strided ExtraDW carries the stride on the middle DW (TF middle_dw_downsample=True; timm does the same)
    block = model.blocks[1][0]
    assert block.dw_start.conv.stride == (1, 1) and block.dw_mid.conv.stride == (2, 2)


def test_mqa_handles_odd_and_non_square_inputs():
    model = mnv4.create_model("mobilenetv4_hybrid_medium").eval()
    with torch.no_grad():
        for h, w in ((33, 65), (97, 45), (224, 160)):
            out = model(torch.randn(1, 3, h, w))
            assert out.shape == (1, 1000) and torch.isfinite(out).all()


def test_grad_checkpointing_gives_the_same_gradients():
    model = mnv4.create_model("mobilenetv4_hybrid_medium", num_classes=4).train()
    x = torch.randn(2, 3, 64, 64)
    model(x).sum().backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.set_grad_checkpointing()
    model(x).sum().backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected[n], msg=n)


def test_prune_intermediate_layers_matches_timm(timm):
    ours, ref = mnv4.create_model("mobilenetv4_conv_medium"), timm.create_model("mobilenetv4_conv_medium")
    ours.load_state_dict(ref.state_dict())
    assert ours.prune_intermediate_layers([1, 3]) == ref.prune_intermediate_layers([1, 3])
    assert set(ours.state_dict()) == set(ref.state_dict())
    ours.eval(), ref.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x))
        feats = ours.forward_intermediates(x, indices=[1, 3], intermediates_only=True)
    assert [f.shape[1] for f in feats] == [48, 160] and ours.num_features == 160


def test_fuse_is_deploy_in_place():
    from mnv4.testing import make_nondegenerate, relative_error

    model = make_nondegenerate(mnv4.create_model("mobilenetv4_conv_small"), input_size=(64, 64))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
        fused = model.fuse()
        assert fused is model
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
        assert relative_error(model(x), expected) <= 1e-5


# ------------------------------------------------------------------------------------------------ feature info
def test_feature_info_entries_are_timm_dicts_with_attributes():
    model = mnv4.create_model("mobilenetv4_hybrid_medium")
    first, last = model.feature_info[0], model.feature_info[-1]
    assert first == {"index": 0, "stage": 0, "module": "bn1", "num_chs": 32, "reduction": 2}
    assert last["num_chs"] == last.num_chs == 960 and last.module == "blocks.4" and last.index == 4
    assert model.feature_info.module_name() == ["bn1", "blocks.0", "blocks.1", "blocks.2", "blocks.4"]
    assert [f.stage for f in model.feature_info] == [0, 1, 2, 3, 5]  # the /16 and /32 maps end different stages
    backbone = mnv4.create_model("mobilenetv4_hybrid_medium", features_only=True, out_indices=(2, 4))
    assert [dict(f) for f in backbone.feature_info] == [dict(model.feature_info[2]), dict(model.feature_info[4])]


def test_feature_info_matches_timm(timm):
    for name in ("mobilenetv4_conv_small", "mobilenetv4_hybrid_large", "mobilenetv4_conv_aa_large"):
        ours, ref = mnv4.create_model(name), timm.create_model(name)
        for a, b in zip(ours.feature_info, ref.feature_info, strict=True):
            assert {k: a[k] for k in b} == b, name  # timm's keys: module, num_chs, stage, reduction


@pytest.mark.parametrize(
    "out_indices, match",
    [
        ((), "empty"),
        ((1, 1), "each level once"),
        ((3, 1), "shallow to deep"),
        ((1, -4), "each level once"),  # -4 is level 1 again
        ((0, 5), "level 5 does not exist"),
        (0, "last n levels"),
        ((1.0,), "sequence of ints"),
        ("1", "sequence of ints"),
    ],
)
def test_bad_out_indices_get_one_clear_error(out_indices, match):
    with pytest.raises(UserError, match=match):
        mnv4.create_model("mobilenetv4_conv_small", features_only=True, out_indices=out_indices)


def test_out_indices_int_means_the_last_n_and_intermediates_share_the_rule():
    model = mnv4.create_model("mobilenetv4_conv_small", features_only=True, out_indices=3)
    assert model.out_indices == (2, 3, 4) and model.feature_info.reduction() == [8, 16, 32]
    classifier = mnv4.create_model("mobilenetv4_conv_small").eval()
    with pytest.raises(UserError, match="each level once"):
        classifier.forward_intermediates(torch.randn(1, 3, 64, 64), indices=[2, 2])


def test_feature_dict_keys_and_feature_cls_errors():
    model = mnv4.create_model("mobilenetv4_conv_medium", features_only=True, feature_cls="dict", out_indices=(1, 2, 3))
    with torch.no_grad():
        out = model.eval()(torch.randn(1, 3, 64, 64))
    assert isinstance(out, OrderedDict) and list(out) == ["1", "2", "3"]
    assert [out[str(f.index)].shape[1] for f in model.feature_info] == model.feature_info.channels()
    with pytest.raises(UserError, match="feature_cls must be one of"):
        mnv4.create_model("mobilenetv4_conv_small", features_only=True, feature_cls="hook")
    with pytest.raises(UserError, match="only applies with features_only"):
        mnv4.create_model("mobilenetv4_conv_small", feature_cls="dict")


# ------------------------------------------------------------------------------------------------ head forms
def test_global_pool_forms_and_errors():
    x = torch.randn(2, 3, 64, 96)
    unpooled = mnv4.create_model("mobilenetv4_conv_small", num_classes=0, global_pool="").eval()
    with torch.no_grad():
        assert unpooled(x).shape == (2, 1280, 2, 3)
    unpooled.train()(torch.randn(1, 3, 64, 64))  # no pooling: the head BN sees 2x2 values per channel, batch 1 is fine
    maxed = mnv4.create_model("mobilenetv4_conv_small", global_pool="max").eval()
    with torch.no_grad():
        pooled = maxed.forward_features(x).amax((2, 3), keepdim=True)
        manual = maxed.classifier(maxed.norm_head(maxed.conv_head(pooled)).flatten(1))
        torch.testing.assert_close(maxed(x), manual)
    with pytest.raises(UserError, match="num_classes=0"):
        mnv4.create_model("mobilenetv4_conv_small", global_pool="")
    with pytest.raises(UserError, match="global_pool must be one of"):
        mnv4.create_model("mobilenetv4_conv_small", global_pool="catavgmax")
    with pytest.raises(UserError, match="num_classes=0"):
        maxed.reset_classifier(5, "")
    assert isinstance(maxed.global_pool, torch.nn.AdaptiveMaxPool2d)  # a refused reset changes nothing


def test_reset_classifier_keeps_device_dtype_and_mode():
    model = mnv4.create_model("mobilenetv4_conv_small").to(torch.float64).eval()
    model.reset_classifier(3, "avg")
    assert model.classifier.weight.dtype == torch.float64 and not model.classifier.training
    with torch.no_grad():
        assert model(torch.randn(2, 3, 64, 64, dtype=torch.float64)).shape == (2, 3)


def test_default_cfg_is_the_pretrained_cfg_and_has_pool_size():
    model = mnv4.create_model("mobilenetv4_conv_large.e600_r384_in1k")
    assert model.default_cfg is model.pretrained_cfg and model.default_cfg["pool_size"] == (12, 12)
    model.default_cfg = {"input_size": (3, 224, 224)}
    assert model.pretrained_cfg == {"input_size": (3, 224, 224)}


# ------------------------------------------------------------------------------------------------ input dtype
@pytest.mark.parametrize(
    "dtype, match",
    [
        (torch.uint8, r"expects float32 input like its weights, got uint8.*eval_transform.*x\.float\(\) / 255"),
        (torch.float64, r"expects float32 input like its weights, got float64.*x\.to\(torch\.float32\)"),
        (torch.float16, r"got float16.*model\.to\(torch\.float16\).*autocast"),
    ],
)
def test_wrong_input_dtype_says_what_is_expected(dtype, match):
    model = mnv4.create_model("mobilenetv4_conv_small").eval()
    with pytest.raises(UserError, match=match):
        model(torch.zeros(1, 3, 64, 64, dtype=dtype))


def test_matching_dtypes_and_autocast_still_run():
    model = mnv4.create_model("mobilenetv4_hybrid_medium").eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert model(x).dtype == torch.bfloat16
            assert model(x.half()).shape == (2, 1000)  # autocast casts any float input
        assert model.to(torch.bfloat16)(x.bfloat16()).dtype == torch.bfloat16
        assert model.double()(x.double()).dtype == torch.float64


# ------------------------------------------------------------------------------------------------ compilers
def test_fx_graph_keeps_the_input_checks_and_export_skips_them():
    model = mnv4.create_model("mobilenetv4_conv_small").eval()
    graph = torch.fx.symbolic_trace(model)
    assert sum(n.target is mnv4.model.check_image_batch for n in graph.graph.nodes) == 1
    with pytest.raises(UserError, match="expects float32"):
        graph(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))
    exported = torch.export.export(model, (torch.randn(1, 3, 64, 64),))
    assert "check_image_batch" not in str(exported.graph)


def test_python_dash_m_runs_the_cli():
    done = subprocess.run([sys.executable, "-m", "mnv4", "models", "*conv_small"], capture_output=True, text=True)
    assert done.returncode == 0 and "mobilenetv4_conv_small " in done.stdout and "3,774,024" in done.stdout
    bad = subprocess.run([sys.executable, "-m", "mnv4", "models", "nothing*"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.strip().startswith("mnv4 models: error:")
