"""Training checkpoints: written atomically, loaded without unpickling code, complete enough to resume bit-exactly.

A checkpoint holds the model, EMA, optimiser, LR scheduler and grad-scaler states, the position (epoch, step in
epoch, global step), the data-order state (seed, global batch: the order of every epoch is a function of these), the
RNG states of python / numpy / torch CPU / CUDA, the best metric so far and the config. Everything is stored as
tensors and plain Python types so ``torch.load(weights_only=True)`` reads it (no pickled objects).
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

CKPT_PATTERN = re.compile(r"^ckpt-(\d{8})\.pt$")


def checkpoint_name(global_step: int) -> str:
    return f"ckpt-{global_step:08d}.pt"


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to a temporary file in the same folder, fsync, then ``os.replace``: a reader (or a resume
    after a crash) sees the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def rng_state() -> dict[str, Any]:
    """All global RNG states as tensors / plain types (``weights_only``-loadable)."""
    version, py_state, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, list(py_state), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, py_state, gauss = state["python"]
    random.setstate((version, tuple(py_state), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def list_checkpoints(folder: str | Path) -> list[Path]:
    """The step checkpoints in ``folder``, oldest first (temporary files of an interrupted save are ignored)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := CKPT_PATTERN.match(p.name))]
    return [p for _, p in sorted(found)]


def prune_checkpoints(folder: str | Path, keep_last: int) -> None:
    for old in list_checkpoints(folder)[:-keep_last]:
        old.unlink(missing_ok=True)


def resolve_resume(resume: str, out: str | Path) -> Path:
    """``'auto'`` -> newest checkpoint in ``out``; otherwise the given file (checked)."""
    if resume == "auto":
        found = list_checkpoints(out)
        if not found:
            raise FileNotFoundError(f"--resume auto: no checkpoint (ckpt-*.pt) in {str(out)!r}")
        return found[-1]
    path = Path(resume)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint without executing pickled code."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises several types for truncated / foreign files
        raise RuntimeError(f"cannot read checkpoint {str(path)!r}: {type(err).__name__}: {err}") from None
