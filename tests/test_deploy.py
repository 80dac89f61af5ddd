"""mnv4.deploy: BN / layer-scale folding is exact, leaves fewer modules, and keeps the model's API."""

from __future__ import annotations

import ast
import copy
from pathlib import Path

import pytest
import torch
from torch import nn

import mnv4
from mnv4 import deploy as deploy_module
from mnv4.blocks import MobileMQA
from mnv4.deploy import ChannelAffine, count_modules, deploy, is_deployed
from mnv4.testing import make_nondegenerate, relative_error

SIZE = (64, 96)  # non-square: catches H/W mix-ups in reshapes


def _model(name: str, **kwargs) -> mnv4.MobileNetV4:
    torch.manual_seed(0)
    model = mnv4.create_model(name, **kwargs)
    return make_nondegenerate(model, seed=1, input_size=(64, 64), batch_size=2, passes=1)


@pytest.mark.parametrize("name", mnv4.list_models())
@torch.no_grad()
def test_deploy_is_exact_for_every_variant(name):
    model = _model(name)
    x = torch.randn(1, 3, *SIZE, generator=torch.Generator().manual_seed(2))

    # Exactness of the algebra: in float64 the folded model matches to rounding (~1e-14).
    ref64 = copy.deepcopy(model).double()
    truth = ref64(x.double())
    assert relative_error(deploy(ref64)(x.double()), truth) < 1e-10

    # float32, block by block, both fed the same input: each folded block is within 1e-5 of the float64 truth
    # relative to its output scale, or no further from it than 3x the original block (the deep random hybrids'
    # attention amplifies float32 rounding by itself).
    deployed = deploy(model)
    h = x.double()
    pairs = [(nn.Sequential(model.conv_stem, model.bn1), nn.Sequential(deployed.conv_stem, deployed.bn1),
              nn.Sequential(ref64.conv_stem, ref64.bn1))]
    for stage, dstage, stage64 in zip(model.blocks, deployed.blocks, ref64.blocks, strict=True):
        pairs += list(zip(stage, dstage, stage64, strict=True))
    for block, dblock, block64 in pairs:
        out64 = block64(h)
        err_deployed = relative_error(dblock(h.float()), out64)
        assert err_deployed <= max(1e-5, 3 * relative_error(block(h.float()), out64)), f"{name}: {block}"
        h = out64

    # End to end in float32: a sanity bound (the per-block check above is the precise one; deep random hybrids
    # amplify rounding chaotically, so end-to-end 1e-5 is tested on the models where it is meaningful, below).
    assert relative_error(deployed(x), truth) <= 1e-4

    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in deployed.modules())
    assert count_modules(deployed) < count_modules(model)
    assert not deployed.training
    assert is_deployed(deployed) and not is_deployed(model)


@torch.no_grad()
def test_deploy_fp32_end_to_end_within_1e5():
    for name in ("mobilenetv4_conv_small", "mobilenetv4_conv_medium", "mobilenetv4_hybrid_medium"):
        torch.manual_seed(0)
        model = make_nondegenerate(mnv4.create_model(name), seed=1, input_size=(96, 96), batch_size=8)
        x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(3))
        truth = copy.deepcopy(model).double()(x.double())
        # Folded vs unfolded, both float32: <= 1e-5 of the logit scale, or (hybrids, where float32 attention is itself
        # that noisy) no further from the float64 truth than twice the unfolded model's own float32 error.
        err = relative_error(deploy(model)(x), model(x))
        assert err <= max(1e-5, 2 * relative_error(model(x), truth)), name


@torch.no_grad()
def test_deploy_folds_layer_scale_and_mqa_norm():
    model = _model("mobilenetv4_hybrid_medium")
    deployed = deploy(model)
    names = [type(m).__name__ for m in deployed.modules()]
    assert "LayerScale2d" not in names and "StochasticDepth" not in names
    mqa = [m for m in deployed.modules() if isinstance(m, MobileMQA)]
    assert mqa
    for block in mqa:
        # K/V down-conv BNs are gone (into the DW convs' bias); the pre-norm is one affine, the gamma in output.proj.
        assert "norm" not in block.attn.key._modules and "norm" not in block.attn.value._modules
        assert isinstance(block.norm, ChannelAffine)
        if block.attn.kv_stride > 1:
            assert block.attn.key.down_conv.bias is not None and block.attn.value.down_conv.bias is not None


@torch.no_grad()
def test_deploy_keeps_api_and_input_checks():
    model = _model("mobilenetv4_conv_small", drop_rate=0.3, drop_path_rate=0.1)
    deployed = deploy(model, channels_last=True)
    x = torch.randn(2, 3, 64, 64)
    assert deployed.conv_stem.weight.is_contiguous(memory_format=torch.channels_last)
    assert relative_error(deployed(x.contiguous(memory_format=torch.channels_last)), model(x)) < 1e-5
    assert relative_error(deployed.forward_head(deployed.forward_features(x), pre_logits=True),
                          model.forward_head(model.forward_features(x), pre_logits=True)) < 1e-5
    assert deployed.drop_rate == 0.0
    assert not any(type(m).__name__ == "StochasticDepth" for m in deployed.modules())
    with pytest.raises(ValueError, match="input channels"):
        deployed(torch.randn(1, 1, 64, 64))
    with pytest.raises(ValueError, match="smaller than 32"):
        deployed(torch.randn(1, 3, 16, 16))
    # the original is untouched (not inplace), and deploying twice is a no-op
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert relative_error(deploy(deployed)(x), deployed(x)) == 0.0
    same = deploy(model, inplace=True)
    assert same is model and is_deployed(model)


@torch.no_grad()
def test_deploy_features_only():
    torch.manual_seed(0)
    model = make_nondegenerate(
        mnv4.create_model("mobilenetv4_hybrid_medium", features_only=True, out_indices=(1, 3, 4)),
        seed=1, input_size=(64, 64), batch_size=4,
    )
    deployed = deploy(model)
    x = torch.randn(1, 3, 64, 96)
    ref, out = model(x), deployed(x)
    assert len(out) == 3
    for a, e in zip(out, ref, strict=True):
        assert a.shape == e.shape and relative_error(a, e) < 1e-4  # plumbing; exactness is tested above


def test_deploy_rejects_other_modules():
    with pytest.raises(TypeError, match="MobileNetV4"):
        deploy(nn.Conv2d(3, 3, 1))


def test_deploy_does_not_import_the_model_module():
    """model.fuse() uses deploy, so deploy must not import model back (no import cycle)."""
    tree = ast.parse(Path(deploy_module.__file__).read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert not any(name and name.split(".")[-1] == "model" for name in imported), imported


@torch.no_grad()
def test_deploy_of_a_pruned_model():
    model = _model("mobilenetv4_conv_small")
    model.prune_intermediate_layers([1, 3])
    deployed = deploy(model)
    x = torch.randn(1, 3, 64, 64)
    assert relative_error(deployed(x), model(x)) < 1e-5 and deployed(x).shape == (1, 96, 4, 4)


@torch.no_grad()
def test_deployed_model_scripts_and_traces():
    """Deployment is where TorchScript is still used: the folded model (ChannelAffine, BN-free blocks) compiles."""
    model = deploy(_model("mobilenetv4_hybrid_medium"))
    x = torch.randn(1, 3, *SIZE)
    with torch.jit.optimized_execution(False):
        assert relative_error(torch.jit.script(model)(x), model(x)) <= 1e-5
        assert relative_error(torch.jit.trace(model, x, check_trace=False)(x), model(x)) <= 1e-5
