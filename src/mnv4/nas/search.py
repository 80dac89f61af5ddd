"""``search(cfg)``: the paper's two-stage TuNAS search (paper §6.1, App. A) on a supernet, with a cost target.

One search step (TuNAS): the controller samples an architecture; the shared weights train one step on it; the same
architecture is scored on a held-out batch (top-1 = quality Q); its cost T comes from the cost model; the reward
r = Q + beta |T/T0 - 1| (or MnasNet's forms) updates the controller by REINFORCE against the baseline.

Stages (paper §6.1): 'coarse' searches the stage widths and depths with every block an IB e4 k3; 'fine' keeps those
and searches each block's start/middle DW slots (and expansions, unless fixed). Each stage trains its own supernet
from scratch for the same number of steps; the result of a stage is the argmax of every decision.

Under ``torchrun`` each process samples its own architecture and trains on its share of the batch; gradients of the
shared weights are averaged over the processes (a tensor that no process used stays untouched, as in a single
process), BN running statistics too, and the controller's baseline takes the processes' mean reward.

Exact resume: every random draw of step ``g`` on rank ``r`` (architecture, data order, quality batch, dropout) comes
from a generator seeded with (seed, g, r); a checkpoint holds the supernet, its optimiser and LR schedule, the
controller, its optimiser and baseline, the finished stages, the history and the global RNG states.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from ..specs import ModelSpec, get_spec
from ..train.checkpoint import (
    atomic_save,
    checkpoint_name,
    checkpoint_to_resume,
    prune_checkpoints,
    rng_state,
    set_rng_state,
)
from ..train.data import mix_seed
from ..train.distill import kd_loss
from ..train.distributed import DistContext, all_reduce_sum, cleanup_distributed, init_distributed
from ..train.guard import NonFiniteLossError
from ..train.optim import WarmupCosine, param_groups
from .batches import SupernetData
from .config import RESUME_FREE, SearchConfig, config_from_dict
from .controller import Controller, Reinforce, RLSchedule, reward
from .space import COARSE_KINDS, EXPAND, FINE_KINDS, Arch, SearchSpace, get_space
from .supernet import SuperNet, frozen_bn_statistics

log = logging.getLogger("mnv4.nas")
SAMPLE_STREAM, STEP_STREAM, INIT_STREAM = 21, 22, 23
CKPT_FORMAT = "mnv4-search/1"


@dataclass
class StageResult:
    """The outcome of one stage: the argmax architecture, its cost and the controller's final probabilities."""

    stage: str
    arch: Arch
    values: dict[str, object]
    cost: float
    probabilities: dict[str, dict[str, float]]
    entropy: float
    steps: int

    def to_dict(self) -> dict:
        return {"stage": self.stage, "arch": list(self.arch), "values": self.values, "cost": self.cost,
                "probabilities": self.probabilities, "entropy": self.entropy, "steps": self.steps}

    @classmethod
    def from_dict(cls, d: dict) -> StageResult:
        return cls(d["stage"], tuple(d["arch"]), d["values"], d["cost"], d["probabilities"], d["entropy"],
                   d["steps"])


@dataclass
class SearchResult:
    """``spec`` is the found architecture (None when the search was stopped early by ``stop_after``)."""

    spec: ModelSpec | None
    cost: float | None
    target: float
    cost_name: str
    cost_unit: str
    resolution: int
    stages: list[StageResult]
    history: list[dict] = field(default_factory=list)
    out: Path | None = None
    files: dict[str, Path] = field(default_factory=dict)  # 'spec', 'summary', 'history', 'plot'

    @property
    def complete(self) -> bool:
        return self.spec is not None

    @property
    def probabilities(self) -> dict[str, dict[str, float]]:
        return self.stages[-1].probabilities if self.stages else {}


# ----------------------------------------------------------------------------------------------- cost and target
def make_cost(cfg: SearchConfig, world_size: int = 1):
    """The cost model ``cfg.cost`` names: the roofline at ``cfg.ridge_point``, or the latency table of this machine
    (parts the table lacks are measured when first needed, and kept)."""
    from .cost import LatencyTableCost, roofline_cost

    if cfg.cost == "roofline":
        return roofline_cost(cfg.ridge_point_value(), cfg.precision)
    if world_size > 1:  # timings taken while other processes train on the same machine would be noise
        raise UserError("cost='latency-table' measures latency on this machine, which other processes of a torchrun "
                        "search would disturb: search with one process, or use the roofline cost")
    return LatencyTableCost(cfg.latency_table, threads=cfg.threads, progress=cfg.progress)


def resolve_target(cfg: SearchConfig, cost, resolution: int) -> float:
    """T0: ``cfg.target``, or the cost of ``cfg.target_model`` (a variant or spec file) x ``cfg.target_scale``."""
    if cfg.target is not None:
        return float(cfg.target)
    return float(cost(get_spec(cfg.target_model), resolution)) * cfg.target_scale


def stage_controller(space: SearchSpace, stage: str, cfg: SearchConfig, start: Arch) -> Controller:
    """The controller of ``stage``: coarse searches widths and depths with IB e4 k3 blocks; fine searches the
    block decisions of ``start``'s widths and depths (expansions fixed with ``cfg.fix_expansion``)."""
    if stage == "coarse":
        fixed = space.coarse_blocks(start)
        searched = [i for i, d in enumerate(space.decisions) if d.kind in COARSE_KINDS]
    else:
        fixed, kinds = start, FINE_KINDS
        if cfg.fix_expansion is not None:
            values = {d.name: cfg.fix_expansion for d in space.decisions if d.kind == EXPAND}
            fixed = space.with_values(start, **values)
            kinds = tuple(k for k in FINE_KINDS if k != EXPAND)
        searched = [i for i, d in enumerate(space.decisions) if d.kind in kinds]
    return Controller(space, searched, fixed)


def fine_start(space: SearchSpace, cfg: SearchConfig) -> Arch:
    """The widths and depths a 'fine'-only search keeps: ``cfg.base``, or the space's paper model."""
    name = cfg.base or space.reference
    if name is None:
        raise UserError(f"search space {space.name!r} has no reference model: give the widths/depths with base")
    return space.encode(get_spec(name))


# ----------------------------------------------------------------------------------------------- one stage
class StageRun:
    """A supernet, its optimiser and LR schedule, and the controller's learner, for one stage of the search."""

    def __init__(self, name: str, index: int, space: SearchSpace, cfg: SearchConfig, start: Arch, steps: int,
                 num_classes: int, ctx: DistContext):
        self.name, self.index, self.space, self.cfg, self.steps, self.ctx = name, index, space, cfg, steps, ctx
        with torch.random.fork_rng():  # identical initial weights on every rank, whatever ran before
            torch.manual_seed(mix_seed(cfg.seed, INIT_STREAM, index))
            self.supernet = SuperNet(space, num_classes, drop_rate=cfg.dropout).to(ctx.device)
        train_cfg = cfg.train_config()
        groups = param_groups(self.supernet, train_cfg)
        for group in groups:
            group.pop("l2")
        if cfg.optimizer == "adamw":
            self.optimizer = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
        else:  # TuNAS: RMSProp, decay 0.9, momentum 0.9, epsilon 1.0
            self.optimizer = torch.optim.RMSprop(groups, lr=cfg.lr, alpha=0.9, momentum=0.9, eps=1.0)
        warmup = round(cfg.warmup_fraction * steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, WarmupCosine(warmup, steps, 0.0))
        rl_lr = cfg.rl_lr if cfg.rl_lr is not None else 3e-4 * cfg.global_batch / 256
        schedule = RLSchedule(steps, rl_lr, cfg.rl_delay_fraction, cfg.rl_lr_ramp, cfg.arch_warmup_fraction)
        self.learner = Reinforce(stage_controller(space, name, cfg, start), schedule, cfg.baseline_momentum,
                                 ctx.device)

    def state_dict(self) -> dict:
        return {"supernet": self.supernet.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "learner": self.learner.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.supernet.load_state_dict(state["supernet"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.learner.load_state_dict(state["learner"])

    def result(self, cost, resolution: int) -> StageResult:
        controller = self.learner.controller
        arch = controller.argmax()
        return StageResult(self.name, arch, self.space.values(arch), float(cost(self.space.decode(arch), resolution)),
                           controller.probabilities(arch), controller.entropy(arch), self.steps)

    def step(self, step: int, global_step: int, batch, quality_batch, score: Callable[[Arch, float], tuple]) -> dict:
        cfg, ctx, device = self.cfg, self.ctx, self.ctx.device
        images, labels, teacher = batch
        generator = torch.Generator().manual_seed(mix_seed(cfg.seed, SAMPLE_STREAM, global_step, ctx.rank))
        sample = self.learner.sample(step, generator)
        path = self.space.path(sample.arch, sample.all_ops)

        # 1. the shared weights: one step on this architecture
        torch.manual_seed(mix_seed(cfg.seed, STEP_STREAM, global_step, ctx.rank))  # dropout
        if not self.supernet.training:
            self.supernet.train()
        logits = self.supernet(images.to(device, non_blocking=True), path)
        if teacher is not None:
            loss = kd_loss(logits, teacher.to(device), cfg.kd_temperature)
        else:
            loss = F.cross_entropy(logits.float(), labels.to(device), label_smoothing=cfg.label_smoothing)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if ctx.enabled:
            all_reduce_gradients(list(self.supernet.parameters()), ctx.world_size)
        if cfg.grad_clip:
            nn.utils.clip_grad_norm_(self.supernet.parameters(), cfg.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        if ctx.enabled:
            all_reduce_bn_statistics(self.supernet, ctx.world_size)
        loss_value = float(loss.detach())
        if not math.isfinite(float(all_reduce_sum(loss.detach().double().reshape(1)))):
            raise NonFiniteLossError(f"the supernet loss became NaN/inf at step {global_step}; try a lower --lr")

        # 2. quality on a held-out batch, cost, reward, controller update
        quality = self.quality(*quality_batch, path)
        cost, value = score(sample.arch, quality)
        stats = self.learner.update(sample, value, step, ctx.world_size)
        return {"step": global_step + 1, "stage": self.name, "loss": loss_value, "quality": quality, "cost": cost,
                "lr": self.scheduler.get_last_lr()[0], "warmup_prob": self.learner.schedule.warmup_prob(step),
                **stats}

    @torch.no_grad()
    def quality(self, images: torch.Tensor, labels: torch.Tensor, path) -> float:
        """Top-1 of ``path`` on a held-out batch (BN: that batch's statistics, or the running ones)."""
        if self.cfg.quality_bn == "batch":
            scope = frozen_bn_statistics(self.supernet)
        else:
            scope = nullcontext()
            self.supernet.eval()
        with scope:
            logits = self.supernet(images.to(self.ctx.device, non_blocking=True), path)
        return float((logits.argmax(1).cpu() == labels).float().mean())


def all_reduce_gradients(params: list[nn.Parameter], world_size: int) -> None:
    """Average gradients over the processes in one reduction; a tensor no process used keeps ``grad = None`` (its
    optimiser state is not touched, exactly as in a single process)."""
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    used = torch.tensor([p.grad is not None for p in params], dtype=grads[0].dtype, device=grads[0].device)
    flat = all_reduce_sum(torch.cat([g.reshape(-1) for g in grads] + [used]))
    counts = flat[-len(params):].tolist()
    offset = 0
    for p, count in zip(params, counts, strict=True):
        n = p.numel()
        p.grad = flat[offset : offset + n].view_as(p) / world_size if count > 0 else None
        offset += n


def all_reduce_bn_statistics(model: nn.Module, world_size: int) -> None:
    """Average BN running statistics over the processes (each ran its own architecture): identical replicas."""
    buffers = [b for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
               for b in (m.running_mean, m.running_var)]
    flat = all_reduce_sum(torch.cat([b.reshape(-1) for b in buffers])) / world_size
    offset = 0
    for b in buffers:
        b.copy_(flat[offset : offset + b.numel()].view_as(b))
        offset += b.numel()


# ----------------------------------------------------------------------------------------------- the search
def search(cfg: SearchConfig, cost=None) -> SearchResult:
    """Run the search of ``cfg`` (single process, or one process per device under ``torchrun``) and write its
    outputs to ``cfg.out`` (rank 0): the spec file, ``search.json``, ``history.csv``, ``search.png`` and checkpoints.
    ``cost``: any cost model (``cost(spec, resolution) -> float`` with ``name`` and ``unit``); default: the one
    ``cfg.cost`` names."""
    ctx = init_distributed(cfg.device)
    try:
        return _Search(cfg, ctx, cost).run()
    finally:
        cleanup_distributed()


class _Search:
    def __init__(self, cfg: SearchConfig, ctx: DistContext, cost):
        self.cfg, self.ctx = cfg, ctx
        self.space = get_space(cfg.space)
        self.cost = cost or make_cost(cfg, ctx.world_size)
        self.resolution = cfg.resolution or self.space.resolution
        self.target = resolve_target(cfg, self.cost, self.resolution)
        self.start = fine_start(self.space, cfg) if cfg.stages == ("fine",) else self.space.largest()
        if cfg.fix_expansion is not None and "fine" in cfg.stages:  # fail before any work, not at the fine stage
            stage_controller(self.space, "fine", cfg, self.start)
        self.out = Path(cfg.out)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.data = SupernetData(cfg.data, cfg, cfg.image_size or self.resolution, ctx.world_size, ctx.rank)
        self.steps = cfg.steps or self.data.steps_for(cfg.epochs)
        self.results: list[StageResult] = []
        self.history: list[dict] = []

    def score(self, arch: Arch, quality: float) -> tuple[float, float]:
        t = float(self.cost(self.space.decode(arch), self.resolution))
        return t, reward(quality, t, self.target, self.cfg.beta, self.cfg.reward)

    def run(self) -> SearchResult:
        cfg, plan = self.cfg, self.cfg.stages
        checkpoint = self._load_checkpoint() if cfg.resume else None
        first = checkpoint["stage"] if checkpoint else 0
        if self.ctx.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            log.info("searching %s (%s) for T0 = %.4g %s (%s) at %d px: %s, %d steps each, %d training images",
                     self.space.name, self.space.description, self.target, self.cost.unit, self.cost.name,
                     self.resolution, " then ".join(plan), self.steps, len(self.data.train_indices))
        for index in range(first, len(plan)):
            start = self.results[-1].arch if self.results else self.start
            stage = StageRun(plan[index], index, self.space, cfg, start, self.steps, len(self.data.classes),
                             self.ctx)
            done = 0
            if checkpoint is not None:
                stage.load_state_dict(checkpoint)
                set_rng_state(checkpoint["rng"])
                done, checkpoint = checkpoint["stage_step"], None
            if not self._run_stage(stage, done):
                return self._result(None)
            self.results.append(stage.result(self.cost, self.resolution))
            if self.ctx.is_main:
                log.info("%s stage: %s", stage.name, self.space.describe(self.results[-1].arch))
        return self._finish()

    def _run_stage(self, stage: StageRun, done: int) -> bool:
        """Steps ``done`` .. the end of ``stage``; False when ``stop_after`` stopped the search first."""
        cfg, offset = self.cfg, stage.index * self.steps
        stop = self.steps if cfg.stop_after is None else min(self.steps, max(done, cfg.stop_after - offset))
        batches = self.data.train_batches(offset + done, offset + stop)
        quality_batches = self.data.quality_batches(offset + done, offset + stop)
        progress = None
        if self.ctx.is_main and cfg.progress:
            from tqdm.auto import tqdm

            progress = tqdm(total=self.steps, initial=done, desc=f"{stage.name} stage", leave=False,
                            dynamic_ncols=True)
        try:
            for step in range(done, stop):
                row = stage.step(step, offset + step, next(batches), next(quality_batches), self.score)
                self.history.append(row)
                if progress is not None:
                    progress.update(1)
                    progress.set_postfix(q=f"{row['quality']:.3f}", t=f"{row['cost'] / self.target:.2f}T0",
                                         r=f"{row['reward']:.3f}", h=f"{row['entropy']:.1f}")
                elif self.ctx.is_main and (step + 1) % cfg.log_every == 0:
                    log.info("%s step %d/%d: quality %.3f, cost %.3g T0, reward %.4f, entropy %.2f", stage.name,
                             step + 1, self.steps, row["quality"], row["cost"] / self.target, row["reward"],
                             row["entropy"])
                if cfg.save_every_steps and (offset + step + 1) % cfg.save_every_steps == 0 and step + 1 < stop:
                    self._save(stage, step + 1)
        finally:
            if progress is not None:
                progress.close()
        self._save(stage, stop)
        return stop == self.steps

    # ------------------------------------------------------------------------------------------- checkpoints
    def _save(self, stage: StageRun, stage_step: int) -> None:
        if self.ctx.is_main:
            state = {
                "format": CKPT_FORMAT,
                **stage.state_dict(),
                "stage": stage.index,
                "stage_step": stage_step,
                "global_step": stage.index * self.steps + stage_step,
                "steps_per_stage": self.steps,
                "num_samples": len(self.data.train_set),
                "results": [r.to_dict() for r in self.results],
                "history": self.history,
                "rng": rng_state(),
                "config": self.cfg.to_dict(),
            }
            atomic_save(state, self.out / checkpoint_name(state["global_step"]))
            prune_checkpoints(self.out, self.cfg.keep_last)
        if self.ctx.enabled:
            torch.distributed.barrier()

    def _load_checkpoint(self) -> dict | None:
        """The checkpoint ``--resume`` names (``None``: ``auto`` and no checkpoint yet -- a new search, as
        ``mnv4 train`` does), checked to belong to this search."""
        found = checkpoint_to_resume(self.cfg.resume, self.out, entry="supernet", kind="mnv4 search")
        if found is None:
            if self.ctx.is_main:
                log.info("--resume auto: no checkpoint in %s yet, starting a new search", self.out)
            return None
        path, ckpt = found
        if ckpt.get("format") != CKPT_FORMAT:
            raise UserError(f"{path} is not an mnv4 search checkpoint")
        stored = config_from_dict(ckpt["config"]).to_dict()
        current = self.cfg.to_dict()
        differ = sorted(k for k in current if k not in RESUME_FREE and stored.get(k) != current[k])
        if differ or ckpt["num_samples"] != len(self.data.train_set) or ckpt["steps_per_stage"] != self.steps:
            detail = ", ".join(f"{k}: checkpoint {stored.get(k)!r}, now {current[k]!r}" for k in differ)
            raise UserError(f"{path} belongs to another search ({detail or 'other data or steps'}); an exact resume "
                            "needs the same settings and data")
        self.results = [StageResult.from_dict(d) for d in ckpt["results"]]
        self.history = list(ckpt["history"])
        if self.ctx.is_main:
            log.info("resumed from %s at global step %d", path, ckpt["global_step"])
        return ckpt

    # ------------------------------------------------------------------------------------------- outputs
    def _result(self, spec: ModelSpec | None) -> SearchResult:
        return SearchResult(spec, self.results[-1].cost if spec is not None else None, self.target, self.cost.name,
                            self.cost.unit, self.resolution, self.results, self.history, self.out)

    def _finish(self) -> SearchResult:
        from .report import write_outputs

        cfg, final = self.cfg, self.results[-1]
        name = cfg.name or f"mnv4_nas_{self.space.name}"
        notes = (f"cost {final.cost:.6g} {self.cost.unit} = {final.cost / self.target:.3f} x T0 "
                 f"(T0 = {self.target:.6g}; {self.cost.name}, {self.resolution} px)",
                 f"stages: {', '.join(r.stage for r in self.results)}; {self.steps} steps each; seed {cfg.seed}")
        spec = self.space.decode(final.arch, name=name, resolution=self.resolution,
                                 description=f"mnv4 search, {self.space.name}", notes=notes)
        result = self._result(spec)
        if self.ctx.is_main:
            result.files = write_outputs(result, cfg, self.out)
        return result


__all__ = ["SearchConfig", "SearchResult", "StageResult", "make_cost", "resolve_target", "search"]
