"""The one step loop every mnv4 run trains with — classification, detection, the search's supernet, segmentation —
read top to bottom: resume -> for each epoch: optimiser steps (micro-batches forward and backward, the update, the
EMA, the task's after-step), step logs, periodic checkpoints -> the epoch's end: the task validates, the epoch row,
``best.pt``, the checkpoint.

What differs between runs is a ``Task``: the micro-batches of an epoch, the loss of one, what happens after an
update (the search's controller step), how an epoch is judged, what a checkpoint holds besides the engine's state.
Everything else — and with it every guarantee — is the engine's, the same for every run:

- determinism: the draws of micro-batch ``c`` at optimiser step ``s`` (dropout, stochastic depth, Mixup) come from
  torch's generator re-seeded with ``(seed, task.step_stream, s, c)``, and the task's data from seeded samplers
  (``mnv4.engine.seeds``), so a run resumed from a checkpoint is bit-identical to one that ran through, and the same
  chunks over more processes give the same numbers;
- NaN/inf in an input, a loss or the gradients stops the run before it reaches the weights, the BN statistics, the
  optimiser or the EMA (``guard``);
- checkpoints are atomic and complete (``state``, ``checkpoint``); ``best.pt`` is written before the checkpoint that
  records it, and made to agree with it on resume (``resume.reconcile_best``); ``steps.csv`` / ``epochs.csv`` drop
  the rows after the step resumed from (``metrics``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from .checkpoint import atomic_save, checkpoint_name, prune_checkpoints
from .config import RunConfig
from .device import wrap_for_training
from .distributed import DistContext, all_reduce_gradients, barrier, broadcast_buffers, main_process_first
from .guard import NonFiniteGuard
from .metrics import MetricLog
from .optim import Optimization
from .plan import RunPlan
from .resume import check_data_order, reconcile_best
from .seeds import STEP_STREAM, mix_seed
from .state import RunState

log = logging.getLogger("mnv4.engine")


class Task:
    """What a run trains and how it is judged. Subclasses implement ``micro_batches`` and ``loss`` and override the
    rest where they need to."""

    kind: str = "mnv4 run"  # names the run in messages
    score_key: str | None = None  # the checkpoint key / epoch-row column of the best score ('best_top1'); None: none
    step_stream: int = STEP_STREAM  # seed stream of the per-micro-batch draws
    # 'ddp': the processes run the same network (DistributedDataParallel); 'used-parameters': each runs its own
    # sub-network (the search), gradients are averaged over the parameters each one used
    gradient_sync: str = "ddp"

    def micro_batches(self, state: RunState) -> Iterator:
        """This process's micro-batches from ``state``'s position to the end of its epoch, in step order."""
        raise NotImplementedError

    def loss(self, model: nn.Module, batch, guard: NonFiniteGuard) -> dict[str, torch.Tensor]:
        """Forward one micro-batch and return its loss terms: ``'loss'`` (what is minimised) first, then any named
        parts for the logs. ``guard.observe('input', images)`` before the forward stops on a non-finite input."""
        raise NotImplementedError

    def replaced(self) -> int:
        """How many training samples were replaced so far (undecodable files); the engine counts them per epoch."""
        return 0

    def after_step(self, state: RunState) -> dict[str, float]:
        """After the update (and the EMA): work of its own (the search's controller step). Returns values to show."""
        return {}

    def validate(self, engine: Engine) -> tuple[dict, float | None]:
        """At an epoch's end (or the run's): columns for the epoch row and the score to keep the best of (None:
        not judged this time)."""
        return {}, None

    def checkpoint_extras(self) -> dict:
        """What a checkpoint holds besides the engine's state (a detector's spec, the controller)."""
        return {}

    def check_resumable(self, ckpt: dict, path: Path) -> None:
        """Raise a ``UserError`` when ``ckpt`` belongs to another run (the data order is checked by the engine)."""

    def load_extras(self, ckpt: dict) -> None:
        """Restore what ``checkpoint_extras`` wrote."""


class Engine:
    """One run of a ``Task``: the model, its optimiser and EMA, the plan, the output folder; ``run()`` trains to
    ``plan.total_steps``. ``cfg`` is the run's (resolved) config: it is stored in every checkpoint."""

    def __init__(
        self,
        task: Task,
        cfg: RunConfig,
        ctx: DistContext,
        plan: RunPlan,
        model: nn.Module,
        optim: Optimization,
        ema: AveragedModel | None = None,
        *,
        compile: bool = False,
        tensorboard: bool = False,
    ):
        self.task, self.cfg, self.ctx, self.plan, self.out = task, cfg, ctx, plan, Path(cfg.out)
        self.tensorboard = tensorboard
        self.state = RunState(model, optim, ema)
        self.train_model = wrap_for_training(model, ctx, compile) if task.gradient_sync == "ddp" else model
        # device-side checks need an optimiser that can skip its update on the device (fused AdamW / Adam)
        eager_guard = ctx.device.type != "cuda" or not (optim.fused or optim.scaler.is_enabled())
        self.guard = NonFiniteGuard(model, ctx.device, self.out, distributed=ctx.enabled, eager=eager_guard)
        self.metrics: MetricLog | None = None

    @property
    def model(self) -> nn.Module:
        return self.state.model

    @property
    def data_order(self) -> dict:
        return {"seed": self.cfg.seed, "global_batch": self.plan.global_batch, "num_samples": self.plan.num_samples}

    # ------------------------------------------------------------------------------------------- resume
    def load(self, ckpt: dict, path: Path) -> None:
        """Continue from ``ckpt`` (read from ``path``): checked to belong to this run, restored, and ``best.pt`` made
        to agree with its record of the best score."""
        check_data_order(ckpt, self.data_order, path)
        self.task.check_resumable(ckpt, path)
        self.state.load_state_dict(ckpt, self.task.score_key)
        self.task.load_extras(ckpt)
        note = None
        if self.task.score_key is not None:
            with main_process_first(self.ctx):  # rank 0 repairs best.pt first; the others then read what it wrote
                note = reconcile_best(self.state, self.task.score_key, self.out, path, may_write=self.ctx.is_main)
        if self.ctx.is_main:
            s = self.state
            log.info("resumed from %s at epoch %d, step %d (global step %d)", path, s.epoch, s.step_in_epoch,
                     s.global_step)
            if note:
                log.warning("%s", note)

    # ------------------------------------------------------------------------------------------- the run
    def run(self) -> RunState:
        """Epochs until ``plan.total_steps``; returns the final state."""
        # rows after the step resumed from (or, in a new run, rows of a run killed before its first checkpoint) go
        self.metrics = MetricLog(self.out, self.ctx.is_main, self.tensorboard, resume_step=self.state.global_step)
        try:
            while self.state.global_step < self.plan.total_steps:
                self.run_epoch()
        finally:
            self.metrics.close()
        return self.state

    def run_epoch(self) -> None:
        """The optimiser steps left in this epoch (or in the run), with step logs and periodic checkpoints, then the
        epoch's end."""
        cfg, plan, state = self.cfg, self.plan, self.state
        batches = self.task.micro_batches(state)
        steps = min(plan.steps_per_epoch - state.step_in_epoch, plan.total_steps - state.global_step)
        progress = None
        if self.ctx.is_main and cfg.progress:
            from tqdm.auto import tqdm

            progress = tqdm(total=steps, desc=f"epoch {state.epoch}", leave=False, dynamic_ncols=True)
        window: dict[str, torch.Tensor] = {}  # steps.csv: the mean of each loss term over the window
        window_start, window_steps = time.perf_counter(), 0
        state.model.train()
        try:
            for _ in range(steps):
                losses, shown = self.train_step(batches)
                for name, value in losses.items():
                    window[name] = window[name] + value if name in window else value.clone()
                window_steps += 1
                last_of_epoch = state.step_in_epoch == plan.steps_per_epoch or state.global_step == plan.total_steps
                periodic_save = cfg.save_every_steps and state.global_step % cfg.save_every_steps == 0
                if window_steps == cfg.log_every or periodic_save or last_of_epoch:
                    self.guard.check()  # reads the device's NaN flag: only where logs are read anyway
                    elapsed = max(time.perf_counter() - window_start, 1e-9)
                    row = {"step": state.global_step, "epoch": state.epoch,
                           **{k: v.item() / window_steps for k, v in window.items()},
                           "lr": state.optim.lr, "img_per_s": window_steps * plan.global_batch / elapsed}
                    self.metrics.write("steps", row, state.global_step)
                    if progress is None and self.ctx.is_main:
                        values = {**row, **shown}
                        log.info("step %d/%d: %s", state.global_step, plan.total_steps,
                                 ", ".join(f"{k} {v:.4g}" for k, v in values.items() if k not in ("step", "epoch")))
                    window, window_start, window_steps = {}, time.perf_counter(), 0
                if progress is not None:
                    progress.update(1)
                    progress.set_postfix(loss=f"{losses['loss'].item():.4f}",
                                         **{k: f"{v:.3g}" for k, v in shown.items()})
                if periodic_save and not last_of_epoch:
                    self.save(best=False)
        finally:
            if progress is not None:
                progress.close()
        self.end_epoch()

    def train_step(self, batches) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """One optimiser step: ``accum`` micro-batches forward and backward, the gradient sync, the update, the EMA,
        the task's after-step. Returns the step's loss terms (means over the micro-batches, on the device) and the
        values the task shows."""
        cfg, plan, ctx, task, state = self.cfg, self.plan, self.ctx, self.task, self.state
        self.guard.begin_step(state.global_step, state.epoch)
        replaced_before = task.replaced()
        step_losses: dict[str, torch.Tensor] = {}
        for a in range(plan.accum):
            batch = next(batches)
            # dropout / stochastic depth / mixup of this chunk: a function of (seed, step, chunk) only
            torch.manual_seed(mix_seed(cfg.seed, task.step_stream, state.global_step, ctx.rank * plan.accum + a))
            losses = task.loss(self.train_model, batch, self.guard)
            loss = losses["loss"]
            self.guard.observe("loss", loss)
            sync = a == plan.accum - 1 or not ctx.enabled or task.gradient_sync != "ddp"
            with nullcontext() if sync else self.train_model.no_sync():
                state.optim.scaler.scale(loss / plan.accum).backward()
            for name, value in losses.items():
                term = value.detach().double() / plan.accum
                step_losses[name] = step_losses[name] + term if name in step_losses else term
        if task.gradient_sync == "used-parameters" and ctx.enabled:
            all_reduce_gradients(list(state.model.parameters()), ctx.world_size)
        state.optim.step(state.model, self.guard)
        state.global_step += 1
        state.step_in_epoch += 1
        if state.ema is not None and state.global_step > plan.ema_start_step:
            state.ema.update_parameters(state.model)
        state.totals.add_step(step_losses, task.replaced() - replaced_before)
        return step_losses, task.after_step(state)

    def end_epoch(self) -> None:
        """The end of an epoch (or of the run, mid-epoch with ``max_steps``): the task validates, the epoch row is
        written, the checkpoint saved (as ``best.pt`` too when the score is the best so far)."""
        ctx, state, task = self.ctx, self.state, self.task
        state.totals.reduce(ctx.world_size)
        row = {"epoch": state.epoch, "step": state.global_step,
               **{"train_" + name: value for name, value in state.totals.means().items()},
               "lr": state.optim.lr, "train_replaced": state.totals.replaced}
        if ctx.enabled:  # validate on every rank, and save, the model rank 0 has
            broadcast_buffers(state.model)
            if state.ema is not None:
                broadcast_buffers(state.ema)
        values, score = task.validate(self)
        row.update(values)
        new_best = False
        if score is not None:
            if state.best_score is None or score > state.best_score:
                state.best_score, state.best_step, new_best = score, state.global_step, True
            row[task.score_key] = state.best_score
        # an epoch row written when max_steps ended a run mid-epoch is replaced by the whole epoch's
        state.history = [r for r in state.history if r["epoch"] != state.epoch] + [row]
        if ctx.is_main:
            self.metrics.keep_rows("epochs", lambda r: int(r["epoch"]) != state.epoch)
            self.metrics.write("epochs", row, state.global_step)
            log.info("epoch %d: %s", state.epoch, ", ".join(f"{k} {v:.4g}" for k, v in row.items() if k != "epoch"))
        if state.step_in_epoch == self.plan.steps_per_epoch:
            state.start_next_epoch()
        self.save(best=new_best)

    # ------------------------------------------------------------------------------------------- checkpoints
    def save(self, best: bool) -> None:
        """Rank 0 writes ``best.pt`` (when this step is the best so far) and then ``ckpt-<step>.pt``; the others wait.

        ``best.pt`` first: a kill between the two writes leaves a ``best.pt`` newer than the newest checkpoint, which
        ``reconcile_best`` resolves on resume; the other order would leave a checkpoint whose recorded best is not
        the model in ``best.pt``."""
        self.state.totals.reduce(self.ctx.world_size)
        if self.ctx.is_main:
            ckpt = self.state.state_dict(self.cfg.to_dict(), self.data_order, self.task.score_key)
            ckpt.update(self.task.checkpoint_extras())
            if best:
                atomic_save(ckpt, self.out / "best.pt")
            atomic_save(ckpt, self.out / checkpoint_name(self.state.global_step))
            prune_checkpoints(self.out, self.cfg.keep_last)
        barrier(self.ctx)
