"""``MetricLog``: the run's CSV files (``steps.csv`` every ``log_every`` steps, ``epochs.csv`` per epoch) and
TensorBoard scalars, written by rank 0, and cut back to a checkpoint's step when a run resumes from it."""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger("mnv4.engine")


class MetricLog:
    """CSV files and TensorBoard scalars (rank 0 only: ``enabled``). Rows are dicts; a row with new columns (the
    EMA's, once it starts) rewrites the file with the union of the columns.

    ``resume_step``: the run resumes from the checkpoint of that global step, so everything logged after it (rows
    written between that checkpoint and a kill) is dropped: the resumed run writes those steps again."""

    def __init__(self, out: Path, enabled: bool, tensorboard: bool, resume_step: int | None = None):
        self.out, self.enabled, self.writer = out, enabled, None
        if enabled and resume_step is not None:
            for name in ("steps", "epochs"):
                self.keep_rows(name, lambda row: int(row["step"]) <= resume_step)
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                purge = None if resume_step is None else resume_step + 1  # events from that step on are dropped
                self.writer = SummaryWriter(str(out / "tensorboard"), purge_step=purge)
            except ImportError:
                log.warning("tensorboard is not installed: logging to CSV only (pip install 'mnv4[train]')")

    def read(self, name: str) -> tuple[list[str], list[dict]]:
        path = self.out / f"{name}.csv"
        if not path.exists():
            return [], []
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            return list(reader.fieldnames or []), list(reader)

    def keep_rows(self, name: str, keep) -> None:
        """Rewrite ``<name>.csv`` with the rows for which ``keep(row)`` is true (written to a temporary file and
        renamed, so a kill leaves the old file or the new one)."""
        header, rows = self.read(name)
        kept = [row for row in rows if keep(row)]
        if len(kept) != len(rows):
            self._rewrite(name, header, kept)

    def _rewrite(self, name: str, header: list[str], rows: list[dict]) -> None:
        path = self.out / f"{name}.csv"
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=header)
            writer.writeheader()
            writer.writerows(rows)
        tmp.replace(path)

    def write(self, name: str, row: dict, step: int) -> None:
        if not self.enabled:
            return
        path = self.out / f"{name}.csv"
        header: list[str] = []
        if path.exists():
            with open(path, newline="") as f:
                header = next(csv.reader(f), [])
        if header and set(row) <= set(header):  # the usual case: append
            with open(path, "a", newline="") as f:
                csv.DictWriter(f, fieldnames=header).writerow(row)
        else:  # first row, or new columns: rewrite with the union of columns
            header, rows = self.read(name)
            self._rewrite(name, header + [k for k in row if k not in header], [*rows, row])
        if self.writer is not None:
            for key, value in row.items():
                if isinstance(value, (int, float)) and key not in ("step", "epoch") and value == value:
                    self.writer.add_scalar(f"{name}/{key}", value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class BadFileLog:
    """Logs each undecodable file once per run (one line: path and reason), whichever worker or epoch met it, and
    counts every time one was met (``count``: the loop reports the counts per epoch)."""

    def __init__(self, what: str = "skipped undecodable image") -> None:
        self.seen: set[str] = set()
        self.what = what
        self.count = 0

    def __call__(self, entries: Sequence[tuple[str, str]]) -> None:
        self.count += len(entries)
        for path, reason in entries:
            if path not in self.seen:
                self.seen.add(path)
                log.warning("%s %s (%s)", self.what, path, reason)
