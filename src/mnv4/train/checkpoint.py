"""Training checkpoints: written atomically, loaded without unpickling code, complete enough to resume bit-exactly.

A checkpoint holds what ``TrainState`` holds (model, EMA, optimiser, LR scheduler, grad scaler, the position, the best
score and the running sums of the epoch in progress), the data-order state (seed, global batch: the order of every
epoch is a function of these), the RNG states of python / numpy / torch CPU / CUDA and the config. Everything is
stored as tensors and plain Python types so ``torch.load(weights_only=True)`` reads it (no pickled objects).

Nothing is lost to a kill: a file is written under a temporary name and renamed into place (readers see the old file
or the new one), temporary files of killed writers are removed by the next run, and a newest checkpoint that cannot
be read is set aside so that ``--resume auto`` falls back to the one before.
"""

from __future__ import annotations

import logging
import os
import random
import re
import shutil
import socket
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import UserError

log = logging.getLogger("mnv4.train")

CKPT_PATTERN = re.compile(r"^ckpt-(\d{8})\.pt$")
# ``.<name>.tmp-<pid>@<host>`` (older versions: ``.<name>.tmp-<pid>``)
TEMP_PATTERN = re.compile(r"^\..+\.tmp-(\d+)(?:@(.+))?$")
UNREADABLE_SUFFIX = ".unreadable"


def checkpoint_name(global_step: int) -> str:
    return f"ckpt-{global_step:08d}.pt"


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to a temporary file in the same folder, fsync, then ``os.replace``: a reader (or a resume
    after a crash) sees the old file or the new one, never half of one. The temporary name carries the writer's pid
    and host, so ``remove_stale_temp_files`` can tell a killed writer's leftover from a live writer's file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
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


def temp_path(path: str | Path) -> Path:
    """The temporary name this process writes ``path`` under before moving it into place: ``.<name>.tmp-<pid>@<host>``
    in the same folder (so the move is one rename on one file system), recognised by ``remove_stale_temp_files``."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}@{socket.gethostname()}")


def remove_stale_temp_files(folder: str | Path) -> list[Path]:
    """Delete the temporary files that killed ``atomic_save`` calls left in ``folder``; returns them.

    A file is stale when its writer was on this host and that process no longer exists (or is this process, which
    is not writing yet). Files of live processes and of other hosts (a shared file system) are left alone. A folder
    with a ``temp_path`` name (a staging folder, ``mnv4.export.pipeline``) is removed as a whole under the same rule;
    only the ``@<host>`` form is taken for a folder.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    host, removed = socket.gethostname(), []
    for path in folder.iterdir():
        match = TEMP_PATTERN.match(path.name)
        is_folder = path.is_dir() and not path.is_symlink()
        if not match or not (path.is_file() or is_folder):
            continue
        pid, writer_host = int(match.group(1)), match.group(2)
        if writer_host not in (None, host) or (is_folder and writer_host is None):
            continue
        if pid != os.getpid() and _process_exists(pid):
            continue
        if is_folder:
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


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


class UnreadableCheckpointError(UserError):
    """A checkpoint file that does not unpickle (truncated, damaged): the one kind ``--resume auto`` steps over."""


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", *, entry: str = "model",
                    kind: str = "mnv4 training") -> dict[str, Any]:
    """Read a checkpoint without executing pickled code; a missing, truncated or foreign file is a ``UserError``.
    ``entry`` is the key every checkpoint of this ``kind`` holds (other writers: the search's ``'supernet'``)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {str(path)!r} does not exist" + (" (it is a folder)" if path.is_dir() else ""))
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises several types for truncated / foreign files
        raise UnreadableCheckpointError(f"cannot read checkpoint {str(path)!r}: {type(err).__name__}: {err}") from None
    if not isinstance(ckpt, dict) or entry not in ckpt:
        raise UserError(f"{str(path)!r} is not an {kind} checkpoint (no {entry!r} entry)")
    return ckpt


def load_latest_checkpoint(folder: str | Path, **kind) -> tuple[Path, dict[str, Any]] | None:
    """The newest readable checkpoint in ``folder`` and its content; ``None`` when there is none at all.

    A newer one that cannot be read (truncated by a full disk, damaged by a copy) is renamed to
    ``<name>.unreadable`` — kept for inspection, but out of ``list_checkpoints``, so pruning cannot delete the good
    ones in its favour — and the one before is used, with a warning naming both.
    """
    found = list_checkpoints(folder)
    for path in reversed(found):
        try:
            return path, load_checkpoint(path, **kind)
        except UnreadableCheckpointError as err:  # a readable file of another kind stays where it is (and fails)
            aside = path.with_name(path.name + UNREADABLE_SUFFIX)
            os.replace(path, aside)
            log.warning("%s; renamed it to %s and trying the checkpoint before it", err, aside.name)
    if found:
        raise UserError(
            f"none of the {len(found)} checkpoints in {str(folder)!r} can be read (each renamed to "
            f"*.pt{UNREADABLE_SUFFIX}); start a new run with another --out, or resume from a file with --resume FILE"
        )
    return None


def checkpoint_to_resume(resume: str | None, out: str | Path, **kind) -> tuple[Path, dict[str, Any]] | None:
    """What ``--resume`` names: nothing (``None``); ``'auto'``: the newest readable checkpoint in ``out``, or
    ``None`` when ``out`` has none yet (a new run: one command both starts and restarts a job); else that file."""
    if not resume:
        return None
    if resume == "auto":
        return load_latest_checkpoint(out, **kind)
    return Path(resume), load_checkpoint(resume, **kind)
