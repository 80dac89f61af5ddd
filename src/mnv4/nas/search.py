"""``search(cfg)``: the paper's two-stage TuNAS search (paper §6.1, App. A) on a supernet, with a cost target.

One search step (TuNAS): the controller samples an architecture; the shared weights train one step on it; the same
architecture is scored on a held-out batch (top-1 = quality Q); its cost T comes from the cost model; the reward
r = Q + beta |T/T0 - 1| (or MnasNet's forms) updates the controller by REINFORCE against the baseline.

Stages (paper §6.1): 'coarse' searches the stage widths and depths with every block an IB e4 k3; 'fine' keeps those
and searches each block's start/middle DW slots (and expansions, unless fixed); 'joint' searches every decision in
one stage (TuNAS's own single-stage search). Each stage trains its own supernet from scratch for the same number of
steps; the result of a stage is the argmax of every decision.

Under ``torchrun`` each process samples its own architecture and trains on its share of the batch; gradients of the
shared weights are averaged over the processes (a tensor that no process used stays untouched, as in a single
process), BN running statistics too, and the controller's baseline takes the processes' mean reward.

Exact resume: every random draw of step ``g`` on rank ``r`` (architecture, data order, quality batch, dropout) comes
from a generator seeded with (seed, g, r); a checkpoint holds the supernet, its optimiser and LR schedule, the
controller, its optimiser and baseline, the finished stages, the history and the global RNG states.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from ..engine import Engine, Optimization, OptimizerSettings, RunPlan, Task, claim_run_folder
from ..engine.checkpoint import checkpoint_to_resume, set_rng_state
from ..engine.device import run_scope
from ..engine.distributed import DistContext, all_reduce_bn_statistics, main_process_first
from ..engine.seeds import mix_seed
from ..errors import UserError
from ..specs import ModelSpec, get_spec
from ..train.distill import kd_loss
from .batches import SupernetData
from .config import RESUME_FREE, SearchConfig, config_from_dict
from .controller import Controller, Reinforce, RLSchedule, reward
from .space import COARSE_KINDS, EXPAND, FINE_KINDS, Arch, SearchSpace, get_space
from .supernet import SuperNet, frozen_bn_statistics

log = logging.getLogger("mnv4.nas")
SAMPLE_STREAM, STEP_STREAM, INIT_STREAM = 21, 22, 23
CKPT_FORMAT = "mnv4-search/2"  # the engine's layout (mnv4.engine.state) + the controller, stages and history
LEGACY_FORMAT = "mnv4-search/1"  # before the search ran on the engine: read through upgrade_checkpoint


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
    block decisions of ``start``'s widths and depths; joint searches everything at once (expansions fixed with
    ``cfg.fix_expansion`` in fine and joint)."""
    if stage == "coarse":
        fixed = space.coarse_blocks(start)
        searched = [i for i, d in enumerate(space.decisions) if d.kind in COARSE_KINDS]
    else:
        fixed, kinds = start, FINE_KINDS + (COARSE_KINDS if stage == "joint" else ())
        if cfg.fix_expansion is not None:
            fixed = space.with_values(start, {d.key: cfg.fix_expansion for d in space.decisions if d.kind == EXPAND})
            kinds = tuple(k for k in kinds if k != EXPAND)
        searched = [i for i, d in enumerate(space.decisions) if d.kind in kinds]
    return Controller(space, searched, fixed)


def fine_start(space: SearchSpace, cfg: SearchConfig) -> Arch:
    """The widths and depths a 'fine'-only search keeps: ``cfg.base``, or the space's paper model."""
    name = cfg.base or space.reference
    if name is None:
        raise UserError(f"search space {space.name!r} has no reference model: give the widths/depths with base")
    return space.encode(get_spec(name))


# ----------------------------------------------------------------------------------------------- one stage
class SupernetTask(Task):
    """One stage of the search as a task of the shared step loop (``mnv4.engine``): each step samples an
    architecture, trains the shared weights one step on it, then (after the update) scores it on a held-out batch,
    takes its cost and reward and updates the controller by REINFORCE. A stage is one engine epoch of ``steps``
    optimiser steps: its end is where the stage's result (the controller's argmax) is taken."""

    kind = "mnv4 search"
    step_stream = STEP_STREAM
    gradient_sync = "used-parameters"  # every process runs its own architecture

    def __init__(self, search: _Search, name: str, index: int, start: Arch, supernet: SuperNet):
        self.search, self.name, self.index = search, name, index
        self.cfg, self.ctx, self.space = search.cfg, search.ctx, search.space
        self.supernet = supernet
        steps, cfg = search.steps, search.cfg
        rl_lr = cfg.rl_lr if cfg.rl_lr is not None else 3e-4 * cfg.global_batch / 256
        schedule = RLSchedule(steps, rl_lr, cfg.rl_delay_fraction, cfg.rl_lr_ramp, cfg.arch_warmup_fraction)
        self.learner = Reinforce(stage_controller(self.space, name, cfg, start), schedule, cfg.baseline_momentum,
                                 self.ctx.device)
        self.pending: tuple | None = None  # the step's sample, path and quality batch, from loss() to after_step()

    @property
    def first_step(self) -> int:
        return self.index * self.search.steps

    def micro_batches(self, state):
        """(training batch, held-out batch, global step) for the steps from ``state``'s to the stage's end."""
        data, start = self.search.data, state.global_step
        stop = self.first_step + self.search.steps
        return zip(data.train_batches(start, stop), data.quality_batches(start, stop), range(start, stop),
                   strict=False)

    def loss(self, model, batch, guard):
        (images, labels, teacher), quality_batch, global_step = batch
        cfg, ctx = self.cfg, self.ctx
        step = global_step - self.first_step
        generator = torch.Generator().manual_seed(mix_seed(cfg.seed, SAMPLE_STREAM, global_step, ctx.rank))
        sample = self.learner.sample(step, generator)
        path = self.space.path(sample.arch, sample.all_ops)
        if not model.training:  # scoring with running BN statistics leaves it in eval mode
            model.train()
        images = images.to(ctx.device, non_blocking=True)
        guard.observe("input", images)
        logits = model(images, path)
        if teacher is not None:
            loss = kd_loss(logits, teacher.to(ctx.device), cfg.kd_temperature)
        else:
            loss = F.cross_entropy(logits.float(), labels.to(ctx.device), label_smoothing=cfg.label_smoothing)
        self.pending = sample, path, quality_batch, step, global_step, loss.detach()
        return {"loss": loss}

    def after_step(self, state) -> dict[str, float]:
        """Quality on a held-out batch, cost, reward, the controller's update; the row of ``history.csv``."""
        sample, path, quality_batch, step, global_step, loss = self.pending
        ctx = self.ctx
        if ctx.enabled:  # each process ran its own architecture: identical replicas again
            all_reduce_bn_statistics(self.supernet, ctx.world_size)
        quality = self.quality(*quality_batch, path)
        cost, value = self.search.score(sample.arch, quality)
        stats = self.learner.update(sample, value, step, ctx.world_size)
        self.search.history.append({
            "step": global_step + 1, "stage": self.name, "loss": float(loss), "quality": quality, "cost": cost,
            "lr": state.optim.lr, "warmup_prob": self.learner.schedule.warmup_prob(step), **stats})
        return {"q": quality, "T/T0": cost / self.search.target, "reward": stats["reward"],
                "entropy": stats["entropy"]}

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

    def validate(self, engine: Engine) -> tuple[dict, float | None]:
        """At the end of the stage: its result, recorded before the checkpoint that closes the stage is written."""
        if engine.state.step_in_epoch == self.search.steps:
            self.search.close_stage(self)
        return {}, None

    def result(self) -> StageResult:
        controller, cost = self.learner.controller, self.search.cost
        arch = controller.argmax()
        return StageResult(self.name, arch, self.space.values(arch),
                           float(cost(self.space.decode(arch), self.search.resolution)),
                           controller.probabilities(arch), controller.entropy(arch), self.search.steps)

    def checkpoint_extras(self) -> dict:
        search = self.search
        return {"format": CKPT_FORMAT, "learner": self.learner.state_dict(), "steps_per_stage": search.steps,
                "results": [r.to_dict() for r in search.results], "search_history": search.history}

    def check_resumable(self, ckpt: dict, path: Path) -> None:
        self.search.check_checkpoint(ckpt, path)

    def load_extras(self, ckpt: dict) -> None:
        self.learner.load_state_dict(ckpt["learner"])


def upgrade_checkpoint(ckpt: dict) -> dict:
    """A checkpoint of the search's first format (``mnv4-search/1``, written before the search ran on the shared
    engine) in today's layout: the supernet under ``model``, the stage as the engine's epoch, the per-step history
    under ``search_history``. The content is the same, so the search continues exactly."""
    if ckpt.get("format") == CKPT_FORMAT:
        return ckpt
    config = ckpt["config"]
    return {**ckpt, "format": CKPT_FORMAT, "model": ckpt["supernet"], "ema": None, "scaler": None,
            "epoch": ckpt["stage"], "step_in_epoch": ckpt["stage_step"],
            "data_order": {"seed": config["seed"], "global_batch": config["global_batch"],
                           "num_samples": ckpt["num_samples"]},
            "search_history": ckpt["history"], "history": []}


# ----------------------------------------------------------------------------------------------- the search
def search(cfg: SearchConfig, cost=None) -> SearchResult:
    """Run the search of ``cfg`` (single process, or one process per device under ``torchrun``) and write its
    outputs to ``cfg.out`` (rank 0): the spec file, ``search.json``, ``history.csv``, ``search.png`` and checkpoints.
    ``cost``: any cost model (``cost(spec, resolution) -> float`` with ``name`` and ``unit``); default: the one
    ``cfg.cost`` names."""
    with run_scope(cfg.device, cfg.threads) as ctx:
        return _Search(cfg, ctx, cost).run()


class _Search:
    """The stages of one search, each a fresh supernet trained by the engine (paper §6.1: two searches)."""

    def __init__(self, cfg: SearchConfig, ctx: DistContext, cost):
        self.cfg, self.ctx = cfg, ctx
        self.space = get_space(cfg.space)
        self.cost = cost or make_cost(cfg, ctx.world_size)  # checks the latency table's path
        self.out = claim_run_folder(cfg.out, cfg.resume, is_main=ctx.is_main)  # before any work
        self.resolution = cfg.resolution or self.space.resolution
        self.target = resolve_target(cfg, self.cost, self.resolution)
        self.start = fine_start(self.space, cfg) if cfg.stages == ("fine",) else self.space.largest()
        if cfg.fix_expansion is not None and cfg.stages[-1] != "coarse":  # fail before any work, not at that stage
            stage_controller(self.space, cfg.stages[-1], cfg, self.start)
        self.data = SupernetData(cfg.data, cfg, cfg.image_size or self.resolution, ctx.world_size, ctx.rank)
        self.steps = cfg.steps or self.data.steps_for(cfg.epochs)
        self.results: list[StageResult] = []
        self.history: list[dict] = []  # one row per step: history.csv

    def score(self, arch: Arch, quality: float) -> tuple[float, float]:
        t = float(self.cost(self.space.decode(arch), self.resolution))
        return t, reward(quality, t, self.target, self.cfg.beta, self.cfg.reward)

    def run(self) -> SearchResult:
        plan = self.cfg.stages
        checkpoint = self._load_checkpoint()
        if self.ctx.is_main:
            log.info("searching %s (%s) for T0 = %.4g %s (%s) at %d px: %s, %d steps each, %d training images",
                     self.space.name, self.space.description, self.target, self.cost.unit, self.cost.name,
                     self.resolution, " then ".join(plan), self.steps, len(self.data.train_indices))
        for index in range(len(self.results), len(plan)):
            engine = self._stage_engine(plan[index], index)
            if checkpoint is not None and checkpoint["epoch"] == index:  # inside this stage (or at its very end)
                engine.load(checkpoint, self.resumed_from)
            checkpoint = None
            engine.run()
            if engine.state.global_step < (index + 1) * self.steps:
                return self._result(None)  # stop_after
            if len(self.results) == index:  # a checkpoint from the very end of the stage, before it was closed
                self.close_stage(engine.task)
        return self._finish()

    def _stage_engine(self, name: str, index: int) -> Engine:
        cfg, ctx = self.cfg, self.ctx
        start = self.results[-1].arch if self.results else self.start
        with torch.random.fork_rng():  # identical initial weights on every rank, whatever ran before
            torch.manual_seed(mix_seed(cfg.seed, INIT_STREAM, index))
            supernet = SuperNet(self.space, len(self.data.classes), drop_rate=cfg.dropout).to(ctx.device)
        warmup = round(cfg.warmup_fraction * self.steps)
        settings = OptimizerSettings(cfg.optimizer, cfg.lr, cfg.weight_decay)
        optim = Optimization.build(supernet, settings, ctx.device, warmup, self.steps, grad_clip=cfg.grad_clip)
        stop = (index + 1) * self.steps
        if cfg.stop_after is not None:
            stop = max(index * self.steps, min(stop, cfg.stop_after))
        # num_samples: all of train/ (the held-out part is a seeded function of it), as checkpoints have always said
        plan = RunPlan(num_samples=len(self.data.train_set), global_batch=cfg.global_batch,
                       batch_size=self.data.batch, accum=1, world_size=ctx.world_size, steps_per_epoch=self.steps,
                       schedule_steps=self.steps, total_steps=stop, warmup_steps=warmup,
                       ema_start_step=0)
        task = SupernetTask(self, name, index, start, supernet)
        engine = Engine(task, cfg, ctx, plan, supernet, optim, tensorboard=cfg.tensorboard)
        engine.state.epoch, engine.state.global_step = index, index * self.steps  # a stage is one engine epoch
        return engine

    def close_stage(self, task: SupernetTask) -> None:
        self.results.append(task.result())
        if self.ctx.is_main:
            log.info("%s stage: %s", task.name, self.space.describe(self.results[-1].arch))

    # ------------------------------------------------------------------------------------------- checkpoints
    def check_checkpoint(self, ckpt: dict, path: Path) -> None:
        """A ``UserError`` unless ``ckpt`` was written by this search: the same settings (but those in
        ``RESUME_FREE``), data and steps per stage."""
        stored = config_from_dict(ckpt["config"]).to_dict()
        current = self.cfg.to_dict()
        differ = sorted(k for k in current if k not in RESUME_FREE and stored.get(k) != current[k])
        same_data = ckpt["data_order"]["num_samples"] == len(self.data.train_set)
        if differ or not same_data or ckpt["steps_per_stage"] != self.steps:
            detail = ", ".join(f"{k}: checkpoint {stored.get(k)!r}, now {current[k]!r}" for k in differ)
            raise UserError(f"{path} belongs to another search ({detail or 'other data or steps'}); an exact resume "
                            "needs the same settings and data")

    def _load_checkpoint(self) -> dict | None:
        """The checkpoint ``--resume`` names (``None``: no resume, or ``auto`` and no checkpoint yet -- a new search,
        as ``mnv4 train`` does), in today's layout, with the finished stages and the history restored."""
        with main_process_first(self.ctx):  # rank 0 sets unreadable checkpoints aside first
            found = checkpoint_to_resume(self.cfg.resume, self.out, entry="learner", kind="mnv4 search")
        if found is None:
            if self.cfg.resume and self.ctx.is_main:
                log.info("--resume auto: no checkpoint in %s yet, starting a new search", self.out)
            return None
        self.resumed_from, ckpt = found
        if ckpt.get("format") not in (CKPT_FORMAT, LEGACY_FORMAT):
            raise UserError(f"{self.resumed_from} is not an mnv4 search checkpoint")
        ckpt = upgrade_checkpoint(ckpt)
        self.check_checkpoint(ckpt, self.resumed_from)
        self.results = [StageResult.from_dict(d) for d in ckpt["results"]]
        self.history = list(ckpt["search_history"])
        if ckpt["step_in_epoch"] == 0 and ckpt["epoch"] == len(self.results):  # a stage's start: it begins afresh
            set_rng_state(ckpt["rng"])
            if self.ctx.is_main:
                log.info("resumed from %s at global step %d", self.resumed_from, ckpt["global_step"])
            return None
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
