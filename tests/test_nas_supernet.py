"""The weight-sharing supernet: a sampled path's weights copied into a stand-alone MobileNetV4 of the decoded spec
give the same logits (non-degenerate weights: random BN affine, BN statistics measured in train mode)."""

import pytest
import torch

from mnv4.nas.space import SPACES
from mnv4.nas.supernet import FixedPath, SuperNet, SuperUIB, frozen_bn_statistics
from mnv4.specs import MODEL_SPECS
from mnv4.testing import make_nondegenerate, relative_error

TOL = 1e-5


def _check_path(net, arch, size, seed):
    space = net.space
    path = space.path(arch)
    make_nondegenerate(FixedPath(net, path), seed=seed, input_size=(size, size), batch_size=4, passes=2)
    model = net.extract(arch)
    assert model.spec == space.decode(arch)
    x = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        for mode in ("eval", "train"):  # running statistics, then batch statistics
            net.train(mode == "train"), model.train(mode == "train")
            ref, ours = model(x), net(x, path)
            assert ref.abs().max() > 0.05, "degenerate logits would prove nothing"
            assert relative_error(ours, ref) <= TOL, (mode, space.describe(arch))


def test_random_tiny_paths_equal_their_standalone_models():
    space = SPACES["tiny"]
    torch.manual_seed(0)
    net = SuperNet(space, num_classes=10)
    generator = torch.Generator().manual_seed(1)
    smallest = tuple(min(range(len(d.choices)), key=lambda i, d=d: d.choices[i]) for d in space.decisions)
    for seed, arch in enumerate([space.largest(), smallest, *(space.random(generator) for _ in range(2))]):
        _check_path(net, arch, 32, seed)


def test_conv_small_is_a_path_of_its_supernet():
    space = SPACES["conv_small"]
    torch.manual_seed(0)
    net = SuperNet(space, num_classes=10)
    _check_path(net, space.encode(MODEL_SPECS["mobilenetv4_conv_small"]), 64, 0)


def test_a_training_step_touches_only_the_sampled_path():
    space = SPACES["tiny"]
    torch.manual_seed(0)
    net = SuperNet(space, num_classes=10)
    arch = space.random(torch.Generator().manual_seed(3))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    net(torch.randn(4, 3, 32, 32), space.path(arch)).logsumexp(1).mean().backward()
    torch.optim.SGD(net.parameters(), lr=0.1).step()
    spec = space.decode(arch)
    used = {net.source_key(k, spec): tuple(v.shape) for k, v in net.extract(arch).state_dict().items()}
    for key, value in net.state_dict().items():
        changed = (value != before[key]).nonzero()
        if key not in used:
            assert changed.numel() == 0, f"{key} is not on the path but changed"
        elif changed.numel():  # only the first k channels of a shared tensor (TuNAS's channel masks)
            assert all(int(changed[:, d].max()) < n for d, n in enumerate(used[key])), key
    assert any((net.state_dict()[k] != before[k]).any() for k in used if k.endswith("weight"))


def test_all_ops_warmup_runs_the_mean_of_every_choice():
    torch.manual_seed(0)
    block = SuperUIB(16, 16, 64, (3, 5), (0, 3, 5), 1, "relu").eval()
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        mid = block.pw_exp.bn(block.pw_exp.conv(x))  # start slot absent, then the expansion, full width
        mixed = block._dw_slot(block.dw_mid, mid, (0, 3, 5))
        single = [block._dw_slot(block.dw_mid, mid, (k,)) for k in (0, 3, 5)]
    assert torch.allclose(mixed, torch.stack(single).mean(0), atol=1e-6)
    assert torch.equal(single[0], mid)  # absent = identity


def test_scoring_with_batch_statistics_leaves_running_statistics_alone():
    space = SPACES["tiny"]
    net = SuperNet(space, num_classes=10).train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with frozen_bn_statistics(net), torch.no_grad():
        out = net(torch.randn(4, 3, 32, 32), space.path(space.largest()))
    assert net.training and all(bn.training for bn in net.batch_norms)
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("space_name", ["conv_medium"])
def test_supernet_names_follow_the_standalone_model(space_name):
    """Every stand-alone tensor has a supernet source of at least its size (so any path extracts)."""
    space = SPACES[space_name]
    with torch.device("meta"):
        net = SuperNet(space, num_classes=1000)
        arch = space.largest()
        spec = space.decode(arch)
        from mnv4.model import MobileNetV4

        model = MobileNetV4(spec)
    source = net.state_dict()
    for key, value in model.state_dict().items():
        src = source[net.source_key(key, spec)]
        assert src.ndim == value.ndim and all(a >= b for a, b in zip(src.shape, value.shape, strict=True)), key
