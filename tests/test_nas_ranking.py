"""The ranking diagnostic (mnv4.nas.ranking): a supernet path scored with recalibrated BN, Kendall tau, bootstrap
intervals and percentiles."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mnv4.errors import UserError
from mnv4.nas.ranking import (
    accuracy,
    bootstrap_interval,
    found_minus_median,
    kendall_tau,
    path_accuracy,
    percentile_of,
    rank_paths,
    recalibrate_bn,
    supernet_from_search,
)
from mnv4.nas.space import SPACES
from mnv4.nas.supernet import SuperNet


def test_kendall_tau_known_values():
    assert kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == 1.0
    assert kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == -1.0
    # 6 pairs: (1,2)+ (1,3)+ (1,4)+ (2,3)- (2,4)+ (3,4)+ -> (5 - 1) / 6
    assert kendall_tau([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(4 / 6)
    # tau-b with a tie in y: pairs 1-2 tied; concordant 5, discordant 0, sqrt(6 * 5)
    assert kendall_tau([1, 2, 3, 4], [1, 1, 2, 3]) == pytest.approx(5 / math.sqrt(30))
    assert math.isnan(kendall_tau([1, 2, 3], [5, 5, 5]))
    with pytest.raises(ValueError):
        kendall_tau([1, 2], [1, 2, 3])


def test_kendall_tau_matches_scipy_on_random_ties():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 6, 30), rng.integers(0, 6, 30)
    assert kendall_tau(x, y) == pytest.approx(stats.kendalltau(x, y).statistic)


def test_bootstrap_interval_covers_and_narrows():
    rng = np.random.default_rng(1)
    small, large = rng.normal(5, 1, 20), rng.normal(5, 1, 500)
    lo_s, hi_s = bootstrap_interval(np.mean, small, resamples=1000)
    lo_l, hi_l = bootstrap_interval(np.mean, large, resamples=1000)
    assert lo_s < np.mean(small) < hi_s and lo_l < 5 < hi_l
    assert hi_l - lo_l < (hi_s - lo_s) / 2  # 25x the data: about 1/5 the width
    # unpaired: a found-minus-median interval over two independent samples
    lo, hi = bootstrap_interval(found_minus_median, [80, 81], [70, 71, 72, 73, 74], paired=False, resamples=500)
    assert 6 <= lo <= hi <= 11
    with pytest.raises(ValueError):
        bootstrap_interval(np.mean, [1.0, 2.0], [1.0], paired=True)


def test_percentile_of_uses_mid_ranks():
    assert percentile_of(5, [1, 2, 3, 4]) == 100
    assert percentile_of(0, [1, 2, 3, 4]) == 0
    assert percentile_of(3, [1, 2, 3, 4, 5]) == 50
    assert percentile_of(2.5, [1, 2, 3, 4]) == 50
    assert found_minus_median([80.0, 82.0], [70, 75, 79]) == pytest.approx(6.0)


def test_recalibrated_path_is_scored_with_its_own_statistics_and_the_supernet_is_untouched():
    space = SPACES["tiny"]
    torch.manual_seed(0)
    net = SuperNet(space, num_classes=5)
    arch = space.random(torch.Generator().manual_seed(2))
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(24, 3, 32, 32, generator=generator) * 2 + 1
    labels = torch.randint(0, 5, (24,), generator=generator)
    before = {k: v.clone() for k, v in net.state_dict().items()}

    result = path_accuracy(net, arch, [images[:12], images[12:]], [(images, labels)])
    assert set(result) == {"top1", "loss", "images"} and result["images"] == 24
    for key, value in net.state_dict().items():
        assert torch.equal(value, before[key]), f"{key} changed"

    # the same numbers by hand: the running statistics are the average of the two batches' statistics
    model = recalibrate_bn(net.extract(arch), [images[:12], images[12:]])
    first_bn = model.bn1
    with torch.no_grad():
        stem = model.conv_stem(images)
    per_batch = [stem[:12].mean((0, 2, 3)), stem[12:].mean((0, 2, 3))]
    torch.testing.assert_close(first_bn.running_mean, (per_batch[0] + per_batch[1]) / 2)
    assert not model.training
    assert accuracy(model, [(images, labels)]) == pytest.approx(result)
    # without recalibration: the supernet's own (initial) statistics, another score
    raw = path_accuracy(net, arch, [], [(images, labels)], recalibrate=False)
    assert raw["loss"] != pytest.approx(result["loss"])
    with pytest.raises(ValueError, match="at least one batch"):
        path_accuracy(net, arch, [], [(images, labels)])


def test_a_tiny_ranking_run_gives_a_tau(tmp_path):
    """The diagnostic end to end on the shapes smoke cut: a uniformly sampled supernet (the controller never
    learns), its recalibrated scores of a few architectures, their stand-alone top-1 after a short training, tau."""
    import mnv4
    from mnv4.nas import SearchConfig, search
    from mnv4.nas.batches import SupernetData
    from mnv4.specs import save_spec
    from mnv4.train import TrainConfig, train

    shapes = mnv4.synthetic_shapes(tmp_path / "shapes", train=240, val=120, size=32)
    cfg = SearchConfig(space="tiny", data=str(shapes.root), out=str(tmp_path / "supernet"), stage="joint",
                       target=2.5e7, resolution=32, steps=6, global_batch=24, rl_delay_fraction=1.0,
                       holdout_fraction=0.2, workers=0, threads=1, progress=False, plot=False)
    result = search(cfg)
    for probs in result.probabilities.values():  # RL delayed to the end: the controller is still uniform
        assert len(set(probs.values())) == 1
    supernet = supernet_from_search(cfg.out, num_classes=12)
    data = SupernetData(cfg.data, cfg, 32)
    calibration = [images for images, _, _ in data.train_batches(0, 2)]
    held_out = list(data.held_out_batches(20))
    space = supernet.space
    generator = torch.Generator().manual_seed(0)
    archs = [space.random(generator) for _ in range(4)]
    scores = rank_paths(supernet, archs, calibration, held_out)
    assert [s["images"] for s in scores] == [len(data.held_out)] * 4 == [48] * 4
    standalone = []
    for i, arch in enumerate(archs):
        spec = save_spec(space.decode(arch, name=f"a{i}"), tmp_path / f"a{i}.json")
        run = train(TrainConfig(model=str(spec), data=str(shapes.root), out=str(tmp_path / f"t{i}"), image_size=32,
                                epochs=1, max_steps=2, global_batch=24, workers=0, threads=1, progress=False,
                                tensorboard=False))
        standalone.append(run.final["val_loss"])
    # losses, not top-1: continuous, so no ties after two steps, and tau is (concordant - discordant) / 6 pairs
    tau = kendall_tau([s["loss"] for s in scores], standalone)
    assert -1 <= tau <= 1 and (6 * tau) == pytest.approx(round(6 * tau))
    with pytest.raises(UserError, match="no search checkpoint"):
        supernet_from_search(tmp_path / "shapes", num_classes=12)
