"""Resuming a run: the checks every checkpoint must pass to continue a run exactly (the same data order), and making
``best.pt`` agree with the restored record of the best score.

Finding the checkpoint (``--resume auto`` falls back past unreadable ones and starts a new run when there is none)
is ``checkpoint.checkpoint_to_resume``; restoring it is ``Engine.load``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ..errors import UserError
from .checkpoint import checkpoint_name, load_checkpoint
from .state import RunState


def check_data_order(ckpt: dict, data_order: dict, path: Path) -> None:
    """An exact resume needs the data order of the run that wrote ``ckpt``: its seed, global batch and the number of
    training samples."""
    order = ckpt["data_order"]
    stored = (order["seed"], order["global_batch"], order["num_samples"])
    now = (data_order["seed"], data_order["global_batch"], data_order["num_samples"])
    if stored != now:
        raise UserError(
            f"{path} was written with seed {stored[0]}, global batch {stored[1]} and {stored[2]} training samples; "
            f"this run has {now[0]}, {now[1]}, {now[2]} — an exact resume needs the same (pass the same --seed / "
            "--global-batch and data)"
        )


def reconcile_best(state: RunState, score_key: str, out: Path, resumed: Path, may_write: bool) -> str | None:
    """Make ``best.pt`` and the resumed state's recorded best agree; returns what was done, for the log.

    A kill can separate them (between the ``best.pt`` write and the checkpoint that records it, or a fallback to an
    older checkpoint). In order: nothing to do when they agree; restore ``best.pt`` from the checkpoint of the
    recorded best step if it is still on disk; adopt a ``best.pt`` from after the resumed step (a real model with a
    real, higher score from before the interruption) as the best so far; otherwise forget the record, so the next
    validation writes ``best.pt`` again.
    """
    if state.best_score is None:
        return None
    if state.best_step is None:  # checkpoints of earlier versions: the first epoch row that reached the best
        state.best_step = next((r["step"] for r in state.history if r.get(score_key) == state.best_score), None)
    best_path = out / "best.pt"
    record = None
    if best_path.is_file():
        try:
            best = load_checkpoint(best_path)
            record = (best["global_step"], best.get(score_key))
        except UserError:
            pass
    if record == (state.best_step, state.best_score):
        return None
    found = "best.pt is missing or unreadable"
    if record is not None:
        found = f"best.pt is from step {record[0]} ({score_key} {record[1]:.4g})"
    for source in (resumed, out / checkpoint_name(state.best_step or 0)):
        if source.is_file() and state.best_step is not None:
            ckpt = load_checkpoint(source)
            if (ckpt["global_step"], ckpt.get(score_key)) == (state.best_step, state.best_score):
                if may_write:
                    tmp = best_path.with_name(".best.pt.copy")
                    shutil.copyfile(source, tmp)
                    tmp.replace(best_path)
                return f"{found}; restored it from {source.name}, the recorded best (step {state.best_step})"
    if record is not None and record[1] is not None and record[0] > state.global_step and record[1] >= state.best_score:
        state.best_step, state.best_score = record
        return f"{found}, written after the checkpoint resumed from: kept as the best so far"
    gone = f"{found} and the checkpoint of the recorded best (step {state.best_step}) is gone"
    state.best_step = state.best_score = None
    return f"{gone}: the next validation writes best.pt anew"
