"""Parity with timm (the reference for the released checkpoints), on non-degenerate weights.

Each variant: timm's model (random init, never a download) gets random BN affine parameters and layer-scale gammas
and measured BN statistics (mnv4.testing.make_nondegenerate), its state dict is loaded into ours with strict=True,
and logits, forward_features and every features_only level must agree to max|ours - ref| / max|ref| <= 1e-5 in fp32,
in eval mode and in train mode, at the native resolution and at a non-square size.
"""

import pytest
import torch

import mnv4
from mnv4.specs import EXTRA_MODELS, PAPER_MODELS
from mnv4.testing import make_nondegenerate, relative_error

TOL = 1e-5
ALL = [spec.name for spec in PAPER_MODELS + EXTRA_MODELS]  # every variant timm has (not TF's ConvMediumSeg)


def _pair(timm, name, size, seed=0):
    ref = timm.create_model(name, pretrained=False)
    make_nondegenerate(ref, seed=seed, input_size=size, batch_size=4, passes=2)
    ours = mnv4.create_model(name)
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ours.eval(), ref.eval()


def _check(ours_out, ref_out, what):
    scale = ref_out.abs().max().item()
    assert scale > 0.05, f"{what}: reference output is tiny ({scale:.3g}); the comparison would prove nothing"
    err = relative_error(ours_out, ref_out)
    assert err <= TOL, f"{what}: relative error {err:.3g} > {TOL}"


def _sizes(name):
    native = mnv4.create_model(name).spec.resolution
    return [(native, native), (160, 224)]


@pytest.mark.parametrize("name", ALL)
def test_parity_with_timm(timm, name):
    for size in _sizes(name):
        ours, ref = _pair(timm, name, size)
        x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            _check(ours(x), ref(x), f"{name} {size} eval logits")
            _check(ours.forward_features(x), ref.forward_features(x), f"{name} {size} forward_features")
            _check(
                ours.forward_head(ours.forward_features(x), pre_logits=True),
                ref.forward_head(ref.forward_features(x), pre_logits=True),
                f"{name} {size} pre-logits",
            )
            ours.train(), ref.train()  # BN on batch statistics; drop path and dropout are 0
            _check(ours(x), ref(x), f"{name} {size} train logits")


@pytest.mark.parametrize("name", ["mobilenetv4_conv_small", "mobilenetv4_hybrid_medium", "mobilenetv4_conv_aa_large",
                                  "mobilenetv4_hybrid_large_075"])
def test_features_only_parity(timm, name):
    size = (96, 128)
    ref = timm.create_model(name, pretrained=False)
    make_nondegenerate(ref, input_size=size, batch_size=4)
    ref_feat = timm.create_model(name, pretrained=False, features_only=True)
    backbone = {k: v for k, v in ref.state_dict().items() if k.startswith(("conv_stem", "bn1", "blocks"))}
    ref_feat.load_state_dict(backbone, strict=True)
    ours = mnv4.create_model(name, features_only=True)
    ours.load_state_dict(ref_feat.state_dict(), strict=True)
    ours.eval(), ref_feat.eval()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        a, b = ours(x), ref_feat(x)
    assert len(a) == len(b) == 5
    assert ours.feature_info.channels() == ref_feat.feature_info.channels()
    assert ours.feature_info.reduction() == ref_feat.feature_info.reduction()
    for level, (fa, fb) in enumerate(zip(a, b, strict=True)):
        assert fa.shape == fb.shape
        _check(fa, fb, f"{name} level {level}")


def test_parity_check_catches_a_planted_attention_scale_error(timm):
    """The parity test must fail when the attention scale is 1% off: the weights make attention far from uniform."""
    name, size = "mobilenetv4_hybrid_medium", (256, 256)
    ours, ref = _pair(timm, name, size)
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = ref(x)
        assert relative_error(ours(x), expected) <= TOL
        for m in ours.modules():
            if isinstance(m, mnv4.blocks.MultiQueryAttention2d):
                m.scale *= 1.01
        err = relative_error(ours(x), expected)
    assert err > 10 * TOL, f"a 1% attention-scale error changed the logits by only {err:.3g}"
    with pytest.raises(AssertionError):
        _check(ours(x), expected, "planted")


def test_sdpa_and_math_attention_agree(timm):
    ours, _ = _pair(timm, "mobilenetv4_hybrid_large_075", (96, 160))
    x = torch.randn(2, 3, 96, 160)
    with torch.no_grad():
        a = ours(x)
        b = ours.set_attention_impl("math")(x)
    assert relative_error(b, a) <= TOL


def test_intermediates_match_timm(timm):
    ours, ref = _pair(timm, "mobilenetv4_conv_medium", (128, 96))
    x = torch.randn(2, 3, 128, 96)
    with torch.no_grad():
        for indices in (None, 2, [0, -1], [1, 3]):
            fo, io = ours.forward_intermediates(x, indices=indices)
            fr, ir = ref.forward_intermediates(x, indices=indices)
            _check(fo, fr, "final")
            assert len(io) == len(ir)
            for a, b in zip(io, ir, strict=True):
                _check(a, b, f"intermediate {indices}")
        early = ours.forward_intermediates(x, indices=[1], stop_early=True, intermediates_only=True)
        _check(early[0], ref.forward_intermediates(x, indices=[1], intermediates_only=True)[0], "stop_early")
