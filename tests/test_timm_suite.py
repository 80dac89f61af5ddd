"""timm's model test suite, asked of mnv4: what timm's ``tests/test_models.py`` checks of every timm model, checked
here on every mnv4 variant (13: timm's 12 and TF's ConvMediumSeg) and, for the configs, every tag (28), the way
timm parametrises them.

Forward (with gradient checkpointing giving the same output), backward (every parameter gets a gradient), default
cfgs (pool size = the unpooled map, first conv and classifier in the state dict, every ``reset_classifier`` form and
``global_pool=''``), ``features_only`` (list and dict, ``out_indices``), ``forward_intermediates`` against
``forward_features`` and against a ``features_only`` model, timm's feature getter (``feature_cls='getter'``) against
timm's own ``FeatureGetterNet``, TorchScript (script and trace), FX (``symbolic_trace`` and torchvision's
``create_feature_extractor``) against eager, an FX-traced model scripted, and ``channels_last``. Inputs are small
(64-96 px); the shape checks at the tags' full resolutions run on the meta device (shapes without arithmetic).
"""

from __future__ import annotations

import math
import warnings
from collections import OrderedDict

import pytest
import torch
from torchvision.models.feature_extraction import create_feature_extractor

import mnv4
from mnv4.errors import UserError
from mnv4.testing import relative_error

ALL = mnv4.list_models()
ALL_TAGS = mnv4.list_pretrained(include_untrained=True)
SIZE = (64, 64)  # every variant, forward / backward / TorchScript / FX: small, and still 2x2 at /32
FEATURE_SIZE = (96, 64)  # features: non-square, so an H/W mix-up shows


@pytest.fixture(autouse=True)
def _quiet_torchscript():
    with warnings.catch_warnings():  # torch 2.14 deprecates torch.jit.*; timm users still script and trace
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.(script|trace).*deprecated", category=FutureWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        yield


def _model(name: str, **kwargs) -> mnv4.MobileNetV4:
    torch.manual_seed(0)
    return mnv4.create_model(name, **kwargs).eval()


def _input(size=SIZE, batch: int = 1, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(seed))


def _expected_hw(size, reduction: int) -> tuple[int, int]:
    return tuple(math.ceil(s / reduction) for s in size)


def _assert_same(actual: torch.Tensor, expected: torch.Tensor, what: str = "") -> None:
    """Equal up to float32 rounding of a different summation order: <= 1e-5 of the output's scale (random-init
    logits reach ~1e3, so a per-element tolerance would be meaningless)."""
    assert actual.shape == expected.shape, what
    assert relative_error(actual, expected) <= 1e-5, what


# ------------------------------------------------------------------------------------------------ forward / backward
@pytest.mark.parametrize("name", ALL)
def test_forward_and_grad_checkpointing_give_the_same_output(name):
    model, x = _model(name), _input()
    out = model(x)  # grad enabled, as timm runs it: checkpointing is active below
    assert out.shape == (1, 1000) and torch.isfinite(out).all()
    model.set_grad_checkpointing()
    _assert_same(model(x), out, "grad checkpointing")
    _assert_same(model.forward_intermediates(x)[0], model.forward_features(x), "grad checkpointing, intermediates")


@pytest.mark.parametrize("name", ALL)
def test_backward_every_parameter_gets_a_gradient(name):
    model = _model(name, num_classes=42).train()
    out = model(_input(batch=2))
    assert out.shape == (2, 42) and torch.isfinite(out).all()
    out.mean().backward()
    params = dict(model.named_parameters())
    for pname, p in params.items():
        assert p.grad is not None, f"{pname} got no gradient"
        assert torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, f"{pname} has an all-zero gradient"
    assert sum(p.grad.numel() for p in params.values()) == sum(p.numel() for p in params.values())


# ------------------------------------------------------------------------------------------------ default cfgs
@pytest.mark.parametrize("tag", ALL_TAGS)
def test_default_cfg_pool_size_names_and_head_forms(tag):
    """timm's test_model_default_cfgs, at the tag's full input size on the meta device (shapes only). The body runs
    once; each head form is then applied to its output (``forward`` is ``forward_head(forward_features(x))``)."""
    with torch.device("meta"):
        model = mnv4.create_model(tag).eval()
        cfg, keys = model.default_cfg, set(model.state_dict())
        assert cfg is model.pretrained_cfg and cfg["architecture"] + "." + cfg["tag"] == tag
        assert model.num_classes == cfg["num_classes"] > 0 and model.num_features > 0 and model.head_hidden_size > 0
        x = torch.empty(1, *cfg["input_size"])
        assert model(x).shape == (1, cfg["num_classes"])
        features = model.forward_features(x)
        assert features.shape == (1, model.num_features, *cfg["pool_size"])
        pre_logits = model.forward_head(features, pre_logits=True)
        assert pre_logits.shape == (1, model.head_hidden_size)

        model.reset_classifier(0)  # classifier removed: the pooled 1280-d head output
        assert model.num_classes == 0 and model.forward_head(features).shape == pre_logits.shape
        model.reset_classifier(0, "")  # pooling removed too: the head runs on the unpooled map (timm's MNv3 class)
        assert model.forward_head(features).shape == (1, model.head_hidden_size, *cfg["pool_size"])
        model.reset_classifier(7, "avg")
        assert model.forward_head(features).shape == (1, 7)
        unpooled = mnv4.create_model(tag, num_classes=0, global_pool="").eval()
        assert unpooled.forward_head(features).shape == (1, model.head_hidden_size, *cfg["pool_size"])
    assert cfg["classifier"] + ".weight" in keys and cfg["first_conv"] + ".weight" in keys


# ------------------------------------------------------------------------------------------------ features
@pytest.mark.parametrize("name", ALL)
def test_features_only_list_and_dict(name):
    model = _model(name, features_only=True)
    channels, reductions = model.feature_info.channels(), model.feature_info.reduction()
    assert len(channels) == 5 and reductions == [2, 4, 8, 16, 32]
    x = _input(FEATURE_SIZE)
    with torch.no_grad():
        maps = model(x)
    assert isinstance(maps, list) and len(maps) == 5
    for fmap, ch, red in zip(maps, channels, reductions, strict=True):
        assert fmap.shape == (1, ch, *_expected_hw(FEATURE_SIZE, red)) and torch.isfinite(fmap).all()

    as_dict = _model(name, features_only=True, feature_cls="dict", out_indices=(1, 2, -1))
    as_dict.load_state_dict(model.state_dict())
    with torch.no_grad():
        named = as_dict(x)
    assert isinstance(named, OrderedDict) and list(named) == ["1", "2", "4"]
    assert [f["index"] for f in as_dict.feature_info] == [1, 2, 4]
    for key, fmap in named.items():
        torch.testing.assert_close(fmap, maps[int(key)], rtol=0, atol=0)
    assert "classifier" not in as_dict.default_cfg and "num_classes" not in as_dict.default_cfg  # as timm's


@pytest.mark.parametrize("name", ALL)
def test_forward_intermediates_match_forward_features_and_features_only(timm, name):
    model, x = _model(name), _input(FEATURE_SIZE)
    info = timm.models.FeatureInfo(model.feature_info, len(model.feature_info))  # timm reads our feature_info
    assert info.channels() == model.feature_info.channels() and info.reduction() == [2, 4, 8, 16, 32]
    assert model.feature_info[-1]["num_chs"] == model.num_features
    with torch.no_grad():
        final, maps = model.forward_intermediates(x)
        torch.testing.assert_close(final, model.forward_features(x), rtol=0, atol=0)
        backbone = mnv4.create_model(name, features_only=True).eval()
        backbone.load_state_dict({k: v for k, v in model.state_dict().items() if k in backbone.state_dict()})
        for a, b, ch, red in zip(maps, backbone(x), info.channels(), info.reduction(), strict=True):
            assert a.shape == (1, ch, *_expected_hw(FEATURE_SIZE, red))
            torch.testing.assert_close(a, b, rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------ TorchScript
@pytest.mark.parametrize("name", ALL)
def test_torchscript_script_and_trace_equal_eager(name):
    model, x = _model(name), _input()
    # optimized_execution(False): run the compiled graphs as they are, without the profiling executor's first-run
    # optimisation passes (seconds per model, the bulk of this suite's time; what is tested is the compiled graph)
    with torch.no_grad(), torch.jit.optimized_execution(False):
        expected = model(x)
        scripted = torch.jit.script(model)
        _assert_same(scripted(x), expected, "script")
        traced = torch.jit.trace(model, x, check_trace=False)
        _assert_same(traced(_input(seed=2)), model(_input(seed=2)), "trace, another input")
    # the eager input checks are not part of either compiled graph
    for graph in (scripted.inlined_graph, traced.inlined_graph):
        assert "downsamples by 32" not in str(graph) and "input channels" not in str(graph)


def test_torchscript_features_only():
    """The blocks compile in every variant above; what features_only changes is forward's output: list or dict."""
    x = _input(FEATURE_SIZE)
    for feature_cls in ("list", "dict"):
        model = _model(FX_SCRIPT_DEFAULT, features_only=True, feature_cls=feature_cls, out_indices=(0, 2))
        with torch.no_grad(), torch.jit.optimized_execution(False):
            expected, got = model(x), torch.jit.script(model)(x)
        if feature_cls == "dict":
            assert list(got) == list(expected) == ["0", "2"]
            expected, got = list(expected.values()), list(got.values())
        for a, b in zip(got, expected, strict=True):
            _assert_same(a, b, feature_cls)


# ------------------------------------------------------------------------------------------------ FX
@pytest.mark.parametrize("name", ALL)
def test_fx_symbolic_trace_and_feature_extractor_equal_eager(name):
    model, x = _model(name), _input()
    levels = {level["module"]: f"level{level['index']}" for level in model.feature_info}
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(torch.fx.symbolic_trace(model)(x), expected, rtol=0, atol=0)
        extractor = create_feature_extractor(model, return_nodes={**levels, "classifier": "logits"})
        got = extractor(x)
        torch.testing.assert_close(got["logits"], expected, rtol=0, atol=0)
        for level, fmap in zip(levels.values(), model.forward_intermediates(x, intermediates_only=True), strict=True):
            torch.testing.assert_close(got[level], fmap, rtol=0, atol=0)
    with pytest.raises(UserError, match="input channels"):  # the traced graph still checks its real inputs
        extractor(torch.randn(1, 4, 64, 64))


def test_fx_backward_in_train_mode():
    model = _model("mobilenetv4_conv_small", num_classes=42).train()  # BN on batch statistics, traced
    extractor = create_feature_extractor(model, return_nodes={"classifier": "logits"})
    out = extractor(_input(batch=2))["logits"]
    assert out.shape == (2, 42)
    out.mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in extractor.parameters())


# ------------------------------------------------------------------------------------------------ channels_last
@pytest.mark.parametrize("name", ALL)
def test_channels_last_equals_nchw(name):
    model, x = _model(name), _input()
    with torch.no_grad():
        expected = model(x)
        model = model.to(memory_format=torch.channels_last)
        got = model(x.contiguous(memory_format=torch.channels_last))
    _assert_same(got, expected, "channels_last")


# ------------------------------------------------------------------------------------------------ timm's feature getter
@pytest.mark.parametrize("name", ALL)
def test_feature_getter_equals_timms_feature_getter_net(timm, name):
    """timm's ``feature_cls='getter'`` (test_model_forward_intermediates_features): timm's ``FeatureGetterNet`` wraps a
    classifier, prunes it after the last level and calls ``forward_intermediates``; mnv4's getter model must give the
    same maps and ``feature_info``."""
    from timm.models._features import FeatureGetterNet

    indices = (1, 2, 4)
    classifier, x = _model(name), _input(FEATURE_SIZE)
    getter = _model(name, features_only=True, feature_cls="getter", out_indices=indices)
    getter.load_state_dict({k: v for k, v in classifier.state_dict().items() if k in getter.state_dict()})
    wrapped = FeatureGetterNet(classifier, out_indices=indices).eval()
    assert getter.feature_info.channels() == wrapped.feature_info.channels()
    assert getter.feature_info.reduction() == wrapped.feature_info.reduction() == [4, 8, 32]
    with torch.no_grad():
        maps, expected = getter(x), wrapped(x)
    assert isinstance(maps, list) and len(maps) == len(expected) == 3
    for fmap, ref in zip(maps, expected, strict=True):
        torch.testing.assert_close(fmap, ref, rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------ FX, then TorchScript
FX_SCRIPT_DEFAULT = "mobilenetv4_hybrid_medium"  # every block type (FusedIB, UIB, Mobile MQA); all 12 marked slow


@pytest.mark.parametrize(
    "name", [n if n == FX_SCRIPT_DEFAULT else pytest.param(n, marks=pytest.mark.slow) for n in ALL]
)
def test_fx_traced_model_scripts(name):
    """timm's test_model_forward_fx_torchscript: a traced GraphModule (plain, and torchvision's feature extractor as
    timm builds it) compiles with ``torch.jit.script`` and equals eager; the eager input check it records compiles to
    nothing, while the traced graph itself still runs it."""
    model, x = _model(name), _input()
    extractor = create_feature_extractor(model, return_nodes={"classifier": "logits"})
    with torch.no_grad(), torch.jit.optimized_execution(False):
        expected = model(x)
        traced = torch.jit.script(torch.fx.symbolic_trace(model))
        _assert_same(traced(x), expected, "script of symbolic_trace")
        scripted_extractor = torch.jit.script(extractor)
        _assert_same(scripted_extractor(x)["logits"], expected, "script of create_feature_extractor")
    for graph in (traced.inlined_graph, scripted_extractor.inlined_graph):
        assert "input channels" not in str(graph) and "downsamples by 32" not in str(graph)
    with pytest.raises(UserError, match="input channels"):
        extractor(torch.randn(1, 4, 64, 64))


def test_fx_traced_feature_pyramid_scripts():
    """features_only forward returns a list or a dict: both survive tracing and scripting."""
    x = _input(FEATURE_SIZE)
    for feature_cls in ("list", "dict"):
        model = _model(FX_SCRIPT_DEFAULT, features_only=True, feature_cls=feature_cls, out_indices=(0, 2))
        with torch.no_grad(), torch.jit.optimized_execution(False):
            expected, got = model(x), torch.jit.script(torch.fx.symbolic_trace(model))(x)
        if feature_cls == "dict":
            assert list(got) == list(expected) == ["0", "2"]
            expected, got = list(expected.values()), list(got.values())
        for a, b in zip(got, expected, strict=True):
            _assert_same(a, b, feature_cls)
