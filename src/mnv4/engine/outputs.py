"""What every command promises about the files it writes: nothing lost, nothing late.

- Output locations are checked before any work: a file path that is a folder, a folder that is a file, a parent that
  cannot be written (``check_output_file``, ``check_output_folder``); a new run refuses a folder that holds another
  run (``claim_run_folder``: resume it, or choose another folder).
- Every file is written under a temporary name in its own folder and moved into place only when complete and, where
  it has a check, only when the check passed (``staged_file``): a reader sees the old file or the new one, a failed
  check leaves the old file untouched and no stray file.
- Temporary files of killed writers are removed by the next run in that folder (``remove_stale_temp_files``; the
  temporary name carries the writer's pid and host, so a live writer's file is never touched).
- Artefacts derived from data (soft labels, latency tables, label maps) carry a ``fingerprint`` of what they were made
  from, so they are refused, in one line, for anything else.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import UserError

log = logging.getLogger("mnv4.engine")

# ``.<name>.tmp-<pid>@<host>`` (versions before 0.2: ``.<name>.tmp-<pid>``)
TEMP_PATTERN = re.compile(r"^\..+\.tmp-(\d+)(?:@(.+))?$")

# What a finished or interrupted run leaves in its folder: a new run there would overwrite or prune it.
RUN_FILES = ("best.pt", "model.safetensors", "model_ema.safetensors", "epochs.csv", "steps.csv", "search.json",
             "history.csv")
CHECKPOINT = re.compile(r"^ckpt-\d{8}\.pt$")


def temp_path(path: Path) -> Path:
    """The temporary name ``path`` is written under: same folder (``os.replace`` is atomic there), the writer's pid
    and host in the name."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}@{socket.gethostname()}")


@contextmanager
def staged_file(path: str | os.PathLike) -> Iterator[Path]:
    """Write to the yielded temporary path; when the block ends without an exception the file (or folder, e.g. an
    ``.mlpackage``) replaces ``path``; on an exception it is removed and ``path`` stays as it was. Put the check of the
    written file inside the block: a file that fails it never reaches ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        yield tmp
        if tmp.is_dir() and path.is_dir():  # a folder cannot replace a folder in one step: move the old one aside
            aside = temp_path(path.with_name(path.name + ".old"))
            os.replace(path, aside)
            os.replace(tmp, path)
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def write_text_file(path: str | os.PathLike, text: str) -> Path:
    """``text`` written to ``path`` through a temporary file: a reader never sees half a file, an old file survives a
    failed write."""
    with staged_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | os.PathLike, value) -> Path:
    return write_text_file(path, json.dumps(value, indent=2) + "\n")


def remove_stale_temp_files(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files that killed writers left in ``folder``; returns them.

    A file is stale when its writer was on this host and that process no longer exists (or is this process, which
    is not writing yet). Files of live processes and of other hosts (a shared file system) are left alone. A folder
    with a ``temp_path`` name (a staging folder: an ``.mlpackage``, ``mnv4.export.pipeline``'s staged files) is removed
    as a whole under the same rule; only the ``@<host>`` form is taken for a folder.
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


def _writable_parent(path: Path, flag: str, shown: Path | None = None) -> None:
    """``path``'s nearest existing parent is a writable folder; messages name ``shown`` (default ``path``)."""
    shown = path if shown is None else shown
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"{flag} {shown}: {parent} is a file, not a folder")
    target = path if path.exists() else parent
    if not os.access(target, os.W_OK):
        raise UserError(f"{flag} {shown} is not writable (permission denied)")


def check_output_file(path: str | os.PathLike, flag: str = "--out", suffixes: tuple[str, ...] = ()) -> Path:
    """Check, before any work, that ``path`` can be written as a file: not a folder, its nearest existing parent a
    writable folder (missing folders are created when writing), and its suffix one of ``suffixes`` when given."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{flag} {path} is a folder; give a file name")
    if suffixes and path.suffix.lower() not in suffixes:
        raise UserError(f"{flag} {path}: the file name must end in {' or '.join(suffixes)}")
    _writable_parent(path, flag)
    return path


def check_output_folder(path: str | os.PathLike, flag: str = "--out") -> Path:
    """Check, before any work, that ``path`` can be used as an output folder: not a file, writable (created when
    missing, as are its parents)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{flag} {path} is a file; give a folder")
    _writable_parent(path / "x", flag, shown=path)  # a file in it: the folder itself may not exist yet
    return path


def run_files(folder: Path) -> list[str]:
    """The files of a run in ``folder``: its checkpoints and what it writes at the end (newest checkpoint first)."""
    if not folder.is_dir():
        return []
    names = sorted((p.name for p in folder.iterdir() if CHECKPOINT.match(p.name)), reverse=True)
    return names + [name for name in RUN_FILES if (folder / name).exists()]


def claim_run_folder(out: str | os.PathLike, resume: str | None, flag: str = "--out", is_main: bool = True) -> Path:
    """Before a run does any work: ``out`` must be usable as a folder, and a new run (no ``--resume``) must not start
    in a folder that holds another run's files (it would overwrite its weights and logs and prune its checkpoints).
    Rank 0 then creates the folder and removes temporary files left by killed writers."""
    out = check_output_folder(out, flag)
    if not resume:
        found = run_files(out)
        if found:
            raise UserError(
                f"{out} already holds a run ({', '.join(found[:3])}{', ...' if len(found) > 3 else ''}): pass "
                f"--resume auto to continue it, or another {flag} for a new run"
            )
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        for path in remove_stale_temp_files(out):
            log.info("removed %s, left by a write that was killed", path.name)
    return out


def fingerprint(value) -> str:
    """A short stable digest of a JSON-able value (what an artefact was made from)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def samples_fingerprint(samples: list[tuple[str, int]], root: str | os.PathLike, classes: list[str]) -> str:
    """What identifies a data set for data-derived artefacts: its classes and, in order, each sample's path relative
    to ``root``, label and file size (one image more, fewer or renamed gives another fingerprint)."""
    root = Path(root)
    rows = []
    for path, label in samples:
        p = Path(path)
        try:
            size = p.stat().st_size
        except OSError:
            size = -1
        rows.append([str(p.relative_to(root)) if p.is_relative_to(root) else p.name, label, size])
    return fingerprint({"classes": classes, "samples": rows})
