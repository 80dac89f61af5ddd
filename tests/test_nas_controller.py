"""The TuNAS controller: rewards, baseline, schedules, warm-ups, and two searches with a known answer (no supernet):
a synthetic reward whose optimum is a given architecture, and a constant quality with a cost target T0."""

import math

import pytest
import torch

from mnv4.nas.controller import Controller, EmaBaseline, Reinforce, RLSchedule, reward, search_controller
from mnv4.nas.cost import roofline_cost
from mnv4.nas.space import COARSE_KINDS, FILTER_KINDS, OP_KINDS, SPACES

SPACE = SPACES["tiny"]


def test_reward_forms():
    assert reward(0.7, 110.0, 100.0, -0.1) == pytest.approx(0.7 - 0.01)
    assert reward(0.7, 90.0, 100.0, -0.1) == pytest.approx(0.7 - 0.01)  # abs: below the target costs too
    assert reward(0.7, 110.0, 100.0, -0.07, "mnas") == pytest.approx(0.7 * 1.1**-0.07)
    assert reward(0.7, 90.0, 100.0, -0.07, "mnas") > 0.7  # soft: cheaper is rewarded
    assert reward(0.7, 90.0, 100.0, -0.07, "mnas_hard") == pytest.approx(0.7)  # hard: no bonus below T0


def test_baseline_is_a_zero_debiased_moving_average():
    baseline = EmaBaseline(0.95)
    assert baseline.update(0.4) == pytest.approx(0.4)  # no pull towards 0 at the start
    assert baseline.update(0.6) == pytest.approx((0.95 * 0.05 * 0.4 + 0.05 * 0.6) / (0.05 * 0.95 + 0.05))


def test_rl_learning_rate_delay_and_exponential_ramp():
    schedule = RLSchedule(total=100, lr=1e-3, delay_fraction=0.25, ramp=10.0, warmup_fraction=0.2)
    assert schedule.rl_lr(0) == schedule.rl_lr(24) == 0.0
    assert schedule.rl_lr(25) == pytest.approx(1e-3)
    assert schedule.rl_lr(99) == pytest.approx(1e-3 * 10 ** (74 / 75))
    assert schedule.warmup_prob(0) == 1.0 and schedule.warmup_prob(10) == pytest.approx(0.5)
    assert schedule.warmup_prob(20) == 0.0


def test_warmup_takes_largest_filters_and_enables_all_ops():
    controller = Controller(SPACE, range(len(SPACE.decisions)), SPACE.largest())
    generator = torch.Generator().manual_seed(0)
    warm = controller.sample(generator, filters_prob=1.0, ops_prob=1.0)
    largest = SPACE.largest()
    for i, d in enumerate(SPACE.decisions):  # widths, depths, expansions at their largest
        assert d.kind not in FILTER_KINDS or warm.arch[i] == largest[i], d.name
    ops = {i for i, d in enumerate(SPACE.decisions) if d.kind in OP_KINDS}
    assert warm.all_ops == ops
    warm.log_prob.backward()
    assert controller.logits.grad.abs().sum() == 0  # nothing came from the policy: no gradient
    cold = [controller.sample(generator) for _ in range(20)]
    assert all(not s.all_ops for s in cold) and len({s.arch for s in cold}) > 1


def test_log_prob_counts_only_decisions_that_matter():
    controller = Controller(SPACE, range(len(SPACE.decisions)), SPACE.largest())
    sample = controller.sample(torch.Generator().manual_seed(1))
    sample.log_prob.backward()
    grad = controller.logits.grad
    active = SPACE.active(sample.arch)
    assert not all(active), "pick a seed whose sample has a stage below its maximum depth"
    for j, d in enumerate(SPACE.decisions):
        assert bool(grad[j].abs().sum() > 0) == active[j], d.name
    probs = controller.logits.detach().masked_fill(~controller.valid, float("-inf")).softmax(1)
    expected = sum(math.log(probs[j, c]) for j, (c, on) in enumerate(zip(sample.arch, active, strict=True)) if on)
    assert float(sample.log_prob.detach()) == pytest.approx(expected, rel=1e-5)


def test_synthetic_reward_converges_to_its_optimum():
    """Reward = the fraction of the optimum's decisions (those that matter for it) that a sample matches, counting
    a block's decisions only when the sample has the block too: the argmax must become the optimum."""
    optimum = SPACE.random(torch.Generator().manual_seed(5))
    on = SPACE.active(optimum)

    def score(arch):
        mine = SPACE.active(arch)
        return sum(a == b and m and o for a, b, m, o in zip(arch, optimum, mine, on, strict=True)) / sum(on)

    controller = Controller(SPACE, range(len(SPACE.decisions)), SPACE.largest())
    learner = Reinforce(controller, RLSchedule(300, lr=0.05, delay_fraction=0.1, warmup_fraction=0.1))
    history = search_controller(learner, score, 300)
    found = controller.argmax()
    assert SPACE.decode(found) == SPACE.decode(optimum), (SPACE.describe(found), SPACE.describe(optimum))
    assert history[-1]["baseline"] > 0.9 and controller.entropy() < history[0]["entropy"]


@pytest.mark.parametrize("quantile", [0.2, 0.8])
def test_constant_quality_lands_on_the_cost_target(quantile):
    """Quality constant: the reward is beta |T/T0 - 1| alone, so the chosen architecture's roofline cost must end
    within 10% of T0 (coarse stage: widths and depths searched, blocks IB e4 k3)."""
    cost = roofline_cost("pixel8-edgetpu")
    generator = torch.Generator().manual_seed(0)
    coarse = [SPACE.coarse_blocks(SPACE.random(generator)) for _ in range(200)]
    costs = sorted(cost(SPACE.decode(a), 32) for a in coarse)
    target = costs[int(quantile * len(costs))]
    searched = [i for i, d in enumerate(SPACE.decisions) if d.kind in COARSE_KINDS]
    controller = Controller(SPACE, searched, SPACE.coarse_blocks(SPACE.largest()))
    learner = Reinforce(controller, RLSchedule(300, lr=0.05, delay_fraction=0.1, warmup_fraction=0.1))
    search_controller(learner, lambda arch: reward(0.5, cost(SPACE.decode(arch), 32), target, -0.5), 300, seed=1)
    found = cost(SPACE.decode(controller.argmax()), 32)
    assert abs(found / target - 1) <= 0.10, (found, target, SPACE.describe(controller.argmax()))
    assert all(SPACE.decisions[i].kind in FILTER_KINDS for i in searched)


def test_ranks_share_the_baseline_and_the_controller(tmp_path):
    """Two gloo processes, each with its own reward: the baseline takes their mean, the logits stay identical."""
    import torch.multiprocessing as mp

    mp.spawn(_two_rank_update, args=(str(tmp_path / "rendezvous"),), nprocs=2, join=True)


def _two_rank_update(rank, rendezvous):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=2)
    try:
        controller = Controller(SPACE, range(len(SPACE.decisions)), SPACE.largest())
        learner = Reinforce(controller, RLSchedule(10, lr=0.1, delay_fraction=0.0, warmup_fraction=0.0))
        sample = learner.sample(0, torch.Generator().manual_seed(100 + rank))  # a different architecture per rank
        stats = learner.update(sample, 0.2 + 0.6 * rank, 0, world_size=2)
        assert stats["step_baseline"] == pytest.approx(0.5) and stats["baseline"] == pytest.approx(0.5)
        logits = [torch.zeros_like(controller.logits) for _ in range(2)]
        dist.all_gather(logits, controller.logits.detach().contiguous())
        assert torch.equal(logits[0], logits[1]) and logits[0].abs().sum() > 0
    finally:
        dist.destroy_process_group()
