"""Resuming a run: find the checkpoint (``--resume auto`` falls back past unreadable ones and starts a new run when
there is none), check that it belongs to this run, restore ``TrainState``, and make ``best.pt`` agree with the
restored record of the best score."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from ..errors import UserError
from .checkpoint import checkpoint_name, checkpoint_to_resume, list_checkpoints, load_checkpoint
from .config import TrainConfig, config_from_dict
from .distributed import DistContext, main_process_first
from .plan import RunPlan
from .state import TrainState

log = logging.getLogger("mnv4.train")


def resume(state: TrainState, cfg: TrainConfig, plan: RunPlan, out: Path, ctx: DistContext) -> Path | None:
    """Load the checkpoint ``cfg.resume`` names into ``state``; ``None`` when there is none to resume."""
    with main_process_first(ctx):  # rank 0 sets unreadable checkpoints aside and repairs best.pt first
        found = checkpoint_to_resume(cfg.resume, out)
        if found is not None:
            path, ckpt = found
            check_resumable(ckpt, cfg, plan.num_samples, path)
            state.load_state_dict(ckpt)
            note = reconcile_best(state, out, path, may_write=ctx.is_main)
    if found is None:
        existing = list_checkpoints(out)
        if existing:  # a new run would mix its checkpoints with these (and pruning would delete the wrong ones)
            raise UserError(
                f"{out} already holds the checkpoints of a run ({existing[-1].name}): pass --resume auto to continue "
                "it, or another --out for a new run"
            )
        if cfg.resume and ctx.is_main:
            log.info("--resume %s: no checkpoint in %s yet: starting a new run", cfg.resume, out)
        return None
    if ctx.is_main:
        where = (state.epoch, state.step_in_epoch, state.global_step)
        log.info("resumed from %s at epoch %d, step %d (global step %d)", path, *where)
        if note:
            log.warning("%s", note)
    return path


def reconcile_best(state: TrainState, out: Path, resumed: Path, may_write: bool) -> str | None:
    """Make ``best.pt`` and the resumed state's recorded best agree; returns what was done, for the log.

    A kill can separate them (between the ``best.pt`` write and the checkpoint that records it, or a fallback to an
    older checkpoint). In order: nothing to do when they agree; restore ``best.pt`` from the checkpoint of the
    recorded best step if it is still on disk; adopt a ``best.pt`` from after the resumed step (a real model with a
    real, higher score from before the interruption) as the best so far; otherwise forget the record, so the next
    validation writes ``best.pt`` again.
    """
    if state.best_top1 is None:
        return None
    if state.best_step is None:  # checkpoints of earlier versions: the first epoch row that reached the best
        state.best_step = next((r["step"] for r in state.history if r.get("best_top1") == state.best_top1), None)
    best_path = out / "best.pt"
    record = None
    if best_path.is_file():
        try:
            best = load_checkpoint(best_path)
            record = (best["global_step"], best["best_top1"])
        except UserError:
            pass
    if record == (state.best_step, state.best_top1):
        return None
    found = "best.pt is missing or unreadable"
    if record is not None:
        found = f"best.pt is from step {record[0]} (top-1 {record[1]:.4g})"
    for source in (resumed, out / checkpoint_name(state.best_step or 0)):
        if source.is_file() and state.best_step is not None:
            ckpt = load_checkpoint(source)
            if (ckpt["global_step"], ckpt.get("best_top1")) == (state.best_step, state.best_top1):
                if may_write:
                    tmp = best_path.with_name(".best.pt.copy")
                    shutil.copyfile(source, tmp)
                    tmp.replace(best_path)
                return f"{found}; restored it from {source.name}, the recorded best (step {state.best_step})"
    if record is not None and record[0] > state.global_step and record[1] >= state.best_top1:
        state.best_step, state.best_top1 = record
        return f"{found}, written after the checkpoint resumed from: kept as the best so far"
    gone = f"{found} and the checkpoint of the recorded best (step {state.best_step}) is gone"
    state.best_step = state.best_top1 = None
    return f"{gone}: the next validation writes best.pt anew"


def check_resumable(ckpt: dict, cfg: TrainConfig, num_samples: int, path: Path) -> None:
    order = ckpt["data_order"]
    stored = config_from_dict(ckpt["config"])
    if (order["seed"], order["global_batch"], order["num_samples"]) != (cfg.seed, cfg.global_batch, num_samples):
        raise UserError(
            f"{path} was written with seed {order['seed']}, global batch {order['global_batch']} and "
            f"{order['num_samples']} training images; this run has {cfg.seed}, {cfg.global_batch}, {num_samples} — "
            "an exact resume needs the same (pass the same --seed / --global-batch and data)"
        )
    if stored.model != cfg.model:
        raise UserError(f"{path} is a {stored.model} checkpoint, not {cfg.model}: pass --model {stored.model}")


def resume_config(path: str | Path, **overrides) -> TrainConfig:
    """The config stored in a checkpoint, with ``overrides`` (e.g. to resume a run from its checkpoint alone)."""
    values = load_checkpoint(path)["config"]
    values.update({k: v for k, v in overrides.items() if v is not None})
    return config_from_dict(values)
