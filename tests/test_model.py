"""The family's structure and API: counts, MACs, forward/backward, export, features, timm-style methods."""

import pytest
import torch

import mnv4
from mnv4.analysis import count_params, profile_layers

ALL = mnv4.list_models()

# spec §4 (the released models, not the paper's Tab. 6 counts).
PAPER_PARAMS = {
    "mobilenetv4_conv_small": 3_774_024,
    "mobilenetv4_conv_medium": 9_715_512,
    "mobilenetv4_conv_large": 32_590_864,
    "mobilenetv4_hybrid_medium": 11_074_648,
    "mobilenetv4_hybrid_large": 37_764_624,
}
# spec §4: GMACs at native resolution, counted by FlopCounterMode on timm (convs + linears; SDPA not seen there).
SPEC_GMACS = {
    "mobilenetv4_conv_small": (224, 0.186),
    "mobilenetv4_conv_medium": (256, 1.080),
    "mobilenetv4_conv_large": (384, 6.376),
    "mobilenetv4_hybrid_medium": (256, 1.229),
    "mobilenetv4_hybrid_large": (384, 7.372),
}
# spec §1: channels of the five feature levels (reductions 2, 4, 8, 16, 32).
FEATURE_CHANNELS = {
    "mobilenetv4_conv_small": [32, 32, 64, 96, 960],
    "mobilenetv4_conv_medium": [32, 48, 80, 160, 960],
    "mobilenetv4_conv_large": [24, 48, 96, 192, 960],
    "mobilenetv4_hybrid_medium": [32, 48, 80, 160, 960],
    "mobilenetv4_hybrid_large": [24, 48, 96, 192, 960],
}


def test_registry_lists_the_whole_family():
    assert len(ALL) == 12
    assert mnv4.list_models("*hybrid*") == [
        "mobilenetv4_hybrid_large", "mobilenetv4_hybrid_large_075",
        "mobilenetv4_hybrid_medium", "mobilenetv4_hybrid_medium_075",
    ]
    assert mnv4.list_models("nothing*") == []


@pytest.mark.parametrize("name", sorted(PAPER_PARAMS))
def test_paper_model_param_counts_are_exact(name):
    assert count_params(mnv4.create_model(name)) == PAPER_PARAMS[name]


def test_extra_param_counts_equal_timm(timm):
    for name in ALL:
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
def test_forward_backward_every_parameter_gets_a_gradient(name):
    torch.manual_seed(0)
    model = mnv4.create_model(name, num_classes=10).train()
    out = model(torch.randn(2, 3, 64, 48))
    assert out.shape == (2, 10)
    out.square().mean().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{pname} got no gradient"
        assert torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, f"{pname} has an all-zero gradient"


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
    # a strided ExtraDW carries the stride on the middle DW (spec §2.3)
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
