"""The TuNAS controller: independent categorical logits per decision, trained with REINFORCE (Bender et al., 2020).

Facts from TuNAS's released code that this follows (the MNv4 paper does not restate them):
- one logit vector per decision, initialised to 0 (no RNN); a sample draws every searched decision independently;
  log-probability and entropy count only the decisions that matter for the sample (hierarchical: the blocks beyond
  a stage's depth do not);
- reward ``abs``: r = Q + beta * |T/T0 - 1|; MnasNet's ``mnas``: r = Q * (T/T0)^beta and ``mnas_hard``:
  r = Q * min((T/T0)^beta, 1); beta < 0 (default -0.10);
- baseline: zero-debiased exponential moving average (momentum 0.95) of the step's reward, averaged over replicas
  first, updated before the advantage r - baseline is taken; loss = -(r - baseline) * log pi(a);
- Adam (beta1 = 0, beta2 = 0.999, eps 1e-8); learning rate 0 for the first 25% of steps, then raised
  exponentially, x10 from the start of RL to the end of the search;
- warm-ups over the first 25% of steps: with a probability decaying linearly from 1 to 0 a "filters" decision takes
  its largest choice and an "ops" decision enables all its choices; such decisions contribute log(p) (a constant).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..engine.distributed import all_reduce_sum
from ..errors import UserError
from .space import FILTER_KINDS, OP_KINDS, Arch, SearchSpace

REWARDS = ("abs", "mnas", "mnas_hard")


def reward(quality: float, cost: float, target: float, beta: float, kind: str = "abs") -> float:
    """TuNAS's latency-aware reward of an architecture with quality ``quality`` and cost ``cost`` at target T0."""
    if kind not in REWARDS:
        raise UserError(f"unknown reward {kind!r}; choose one of {', '.join(REWARDS)}")
    ratio = cost / target
    if kind == "abs":
        return quality + beta * abs(ratio - 1.0)
    if kind == "mnas":
        return quality * ratio**beta
    return quality * min(ratio**beta, 1.0)


def linear_decay(step: int, steps: int) -> float:
    """1 at step 0, falling linearly to 0 at ``steps`` (0 steps: always 0)."""
    return 0.0 if steps <= 0 else max(0.0, 1.0 - step / steps)


@dataclass
class Sample:
    """One sampled architecture. ``all_ops``: decisions whose every choice is enabled (ops warm-up); ``log_prob``
    and ``entropy`` carry gradients to the logits."""

    arch: Arch
    all_ops: frozenset[int]
    log_prob: torch.Tensor
    entropy: torch.Tensor


class Controller(nn.Module):
    """Logits for the ``searched`` decisions of ``space``; the other decisions keep their value in ``fixed``.

    The logits live in one (decisions x most choices) matrix, the entries beyond a decision's choices masked out,
    so that sampling, log-probabilities and the Adam step are a few tensor operations whatever the space's size.
    """

    def __init__(self, space: SearchSpace, searched: Sequence[int], fixed: Arch):
        super().__init__()
        space.check_arch(fixed)
        self.space, self.searched, self.fixed = space, tuple(searched), tuple(fixed)
        decisions = [space.decisions[i] for i in self.searched]
        width = max((len(d.choices) for d in decisions), default=1)
        self.logits = nn.Parameter(torch.zeros(len(decisions), width))
        valid = torch.zeros(len(decisions), width, dtype=torch.bool)
        for j, d in enumerate(decisions):
            valid[j, : len(d.choices)] = True
        self.register_buffer("valid", valid, persistent=False)
        largest = [max(range(len(d.choices)), key=lambda c, d=d: d.choices[c]) for d in decisions]
        self.register_buffer("largest", torch.tensor(largest, dtype=torch.long), persistent=False)
        self.register_buffer("filter_kind", torch.tensor([d.kind in FILTER_KINDS for d in decisions]),
                             persistent=False)
        self.register_buffer("op_kind", torch.tensor([d.kind in OP_KINDS for d in decisions]), persistent=False)

    def log_probs(self) -> torch.Tensor:
        """(decisions, choices) log-probabilities; -inf beyond each decision's choices."""
        return self.logits.masked_fill(~self.valid, float("-inf")).log_softmax(1)

    def _active(self, arch: Arch) -> torch.Tensor:
        active = self.space.active(arch)
        return torch.tensor([active[i] for i in self.searched], dtype=torch.bool)

    def sample(self, generator: torch.Generator, filters_prob: float = 0.0, ops_prob: float = 0.0) -> Sample:
        logp = self.log_probs()
        if not self.searched:
            return Sample(self.fixed, frozenset(), logp.sum() * 0, logp.sum() * 0)
        choice = torch.multinomial(logp.detach().exp(), 1, generator=generator).squeeze(1)
        draws = torch.rand(len(self.searched), generator=generator)
        warm_filters = self.filter_kind & (draws < filters_prob)
        warm_ops = self.op_kind & (draws < ops_prob)
        choice = torch.where(warm_filters, self.largest, choice)
        arch = list(self.fixed)
        for i, c in zip(self.searched, choice.tolist(), strict=True):
            arch[i] = c
        arch = tuple(arch)
        active = self._active(arch)
        # Only the active decisions the policy chose carry gradient (hierarchical sampling); a warmed-up decision's
        # log-probability is the constant log(p), and the others' get log(1 - p) added: constants, left out.
        chosen = logp.gather(1, choice[:, None]).squeeze(1)
        log_prob = (chosen * (active & ~warm_filters & ~warm_ops)).sum()
        entropy = self._entropy(logp, active)
        all_ops = frozenset(i for i, w in zip(self.searched, warm_ops.tolist(), strict=True) if w)
        return Sample(arch, all_ops, log_prob, entropy)

    @staticmethod
    def _entropy(logp: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        plogp = torch.where(torch.isfinite(logp), logp.exp() * logp, torch.zeros_like(logp))
        return -(plogp.sum(1) * active).sum()

    def argmax(self) -> Arch:
        """The final architecture: each searched decision at its most likely choice (ties: the first)."""
        arch = list(self.fixed)
        for i, c in zip(self.searched, self.log_probs().argmax(1).tolist(), strict=True):
            arch[i] = c
        return tuple(arch)

    def probabilities(self, arch: Arch | None = None) -> dict[str, dict[str, float]]:
        """{decision: {choice: probability}} for the searched decisions active in ``arch`` (default: the argmax)."""
        arch = arch or self.argmax()
        active = self._active(arch).tolist()
        probs = self.log_probs().detach().exp().tolist()
        out = {}
        for j, i in enumerate(self.searched):
            if active[j]:
                decision = self.space.decisions[i]
                out[decision.name] = {str(c): round(p, 6) for c, p in zip(decision.choices, probs[j], strict=False)}
        return out

    def entropy(self, arch: Arch | None = None) -> float:
        arch = arch or self.argmax()
        with torch.no_grad():
            return float(self._entropy(self.log_probs(), self._active(arch)))


class EmaBaseline:
    """Zero-debiased exponential moving average (TuNAS ``update_exponential_moving_average``)."""

    def __init__(self, momentum: float = 0.95):
        self.momentum, self.numerator, self.denominator = momentum, 0.0, 0.0

    def update(self, value: float) -> float:
        self.numerator = self.momentum * self.numerator + (1 - self.momentum) * value
        self.denominator = self.momentum * self.denominator + (1 - self.momentum)
        return self.value

    @property
    def value(self) -> float:
        return self.numerator / self.denominator if self.denominator else 0.0

    def state_dict(self) -> dict:
        return {"momentum": self.momentum, "numerator": self.numerator, "denominator": self.denominator}

    def load_state_dict(self, state: dict) -> None:
        self.momentum, self.numerator, self.denominator = state["momentum"], state["numerator"], state["denominator"]


@dataclass(frozen=True)
class RLSchedule:
    """Controller LR and warm-up probabilities as functions of the step (of ``total`` in the search stage)."""

    total: int
    lr: float
    delay_fraction: float = 0.25
    ramp: float = 10.0  # the LR grows exponentially by this factor from the end of the delay to the last step
    warmup_fraction: float = 0.25  # ops and filters warm-up

    @property
    def delay_steps(self) -> int:
        return int(self.delay_fraction * self.total)

    @property
    def warmup_steps(self) -> int:
        return int(self.warmup_fraction * self.total)

    def rl_lr(self, step: int) -> float:
        if step < self.delay_steps:
            return 0.0
        progress = (step - self.delay_steps) / max(1, self.total - self.delay_steps)
        return self.lr * self.ramp ** min(progress, 1.0)

    def warmup_prob(self, step: int) -> float:
        return linear_decay(step, self.warmup_steps)


class Reinforce:
    """The controller's learner: sample, then update from the sample's reward (cross-replica baseline)."""

    def __init__(self, controller: Controller, schedule: RLSchedule, baseline_momentum: float = 0.95,
                 reduce_device: torch.device | str = "cpu"):
        # the controller lives on the CPU; cross-process reductions run where the process group wants them (NCCL:
        # the GPU)
        self.controller, self.schedule, self.reduce_device = controller, schedule, torch.device(reduce_device)
        self.baseline = EmaBaseline(baseline_momentum)
        self.optimizer = torch.optim.Adam(controller.parameters(), lr=schedule.lr, betas=(0.0, 0.999), eps=1e-8)

    def sample(self, step: int, generator: torch.Generator) -> Sample:
        p = self.schedule.warmup_prob(step)
        return self.controller.sample(generator, filters_prob=p, ops_prob=p)

    def update(self, sample: Sample, reward_value: float, step: int, world_size: int = 1) -> dict[str, float]:
        """One REINFORCE step; under ``torchrun`` every rank passes its own sample and reward, the baseline takes
        the ranks' mean reward and the logits' gradients are averaged (the controller stays identical)."""
        mean = all_reduce_sum(torch.tensor([reward_value], dtype=torch.float64, device=self.reduce_device))
        step_mean = float(mean[0]) / world_size
        baseline = self.baseline.update(step_mean)
        advantage = reward_value - baseline
        lr = self.schedule.rl_lr(step)
        self.optimizer.zero_grad(set_to_none=True)
        loss = -advantage * sample.log_prob
        if loss.requires_grad:  # not when every decision was warmed up
            loss.backward()
        grad = self.controller.logits.grad
        if grad is None:  # every decision was warmed up: a zero gradient, so that every rank reduces the same
            grad = self.controller.logits.grad = torch.zeros_like(self.controller.logits)
        if world_size > 1:
            grad.copy_(all_reduce_sum(grad.to(self.reduce_device)).cpu() / world_size)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()  # also during the delay (LR 0): Adam's moments warm up, as in TuNAS
        return {"reward": reward_value, "step_baseline": step_mean, "baseline": baseline, "advantage": advantage,
                "rl_lr": lr, "entropy": float(sample.entropy.detach())}

    def state_dict(self) -> dict:
        return {"controller": self.controller.state_dict(), "optimizer": self.optimizer.state_dict(),
                "baseline": self.baseline.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.controller.load_state_dict(state["controller"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.baseline.load_state_dict(state["baseline"])


def search_controller(
    learner: Reinforce,
    reward_fn: Callable[[Arch], float],
    steps: int,
    seed: int = 0,
) -> list[dict[str, float]]:
    """Run the controller alone against a known reward function (no supernet): tests, and cost-only searches."""
    from ..engine.seeds import mix_seed

    history = []
    for step in range(steps):
        generator = torch.Generator().manual_seed(mix_seed(seed, 7, step))
        sample = learner.sample(step, generator)
        history.append(learner.update(sample, reward_fn(sample.arch), step))
    return history
