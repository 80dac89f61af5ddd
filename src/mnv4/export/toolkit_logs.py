"""Keeping the conversion toolkits' chatter off the user's screen, without losing it.

TensorFlow / LiteRT (absl), torch, torchao, litert-torch, ExecuTorch and coremltools print progress and info lines
while they convert or load a model: "oneDNN custom operations are on", "Created TensorFlow Lite XNNPACK delegate",
torchao's ``KernelPreference`` deprecation, litert-torch's "converted in training mode", torch's "No CUDA runtime is
found", ExecuTorch's cpuinfo probing. Some come through Python ``logging``, some are written by C++ straight to file
descriptor 2, where no Python redirection reaches them. ``toolkit_logs_to(path)`` sends both to a log file and lowers
the toolkits' own verbosity where they have a knob (``TF_CPP_MIN_LOG_LEVEL``), so a long command shows our progress
and our table. Python warnings (``warnings.warn``) and errors (exceptions) are not touched: they stay visible.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

# The toolkits' own knobs, applied before they are imported (setdefault: a user's explicit setting wins).
# TF_CPP_MIN_LOG_LEVEL=2: absl/TensorFlow/LiteRT C++ INFO and WARNING lines off (errors still print).
TOOLKIT_ENV = {"TF_CPP_MIN_LOG_LEVEL": "2", "GLOG_minloglevel": "2", "TF_ENABLE_ONEDNN_OPTS": "0"}

# Python loggers whose records go to the log file instead of the screen.
TOOLKIT_LOGGERS = (
    "torch", "torchao", "litert_torch", "ai_edge_litert", "ai_edge_quantizer", "absl", "tensorflow", "onnxruntime",
    "onnxscript", "executorch", "coremltools",
)


def quiet_toolkit_env() -> None:
    """Lower the toolkits' verbosity through their own environment variables (before they are imported)."""
    for key, value in TOOLKIT_ENV.items():
        os.environ.setdefault(key, value)


@contextlib.contextmanager
def native_stderr_to(target: str | os.PathLike | None) -> Iterator[None]:
    """Point file descriptor 2 -- where C/C++ code writes its log lines -- at ``target`` (appended; None: discard)
    for the duration; ``sys.stderr`` is flushed before and after so Python's own output keeps its order."""
    sys.stderr.flush()
    saved = os.dup(2)
    sink = os.open(os.fspath(target) if target else os.devnull, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.dup2(sink, 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(sink)


@contextlib.contextmanager
def toolkit_logs_to(path: str | os.PathLike, screen=None) -> Iterator[object]:
    """Route the toolkits' log output to ``path`` for the duration; yields a text stream on the real screen
    (a duplicate of the original stderr) for progress bars that must stay visible.

    Python loggers in ``TOOLKIT_LOGGERS`` get a file handler and stop propagating; C/C++ output on fd 2 goes to the
    same file. ``sys.stderr`` itself is redirected too (Python code that prints to it lands in the file) -- except
    ``warnings``, which are shown on the screen stream.
    """
    import warnings

    quiet_toolkit_env()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    own_screen = screen is None
    screen = screen or os.fdopen(os.dup(2), "w", buffering=1)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    loggers = [logging.getLogger(name) for name in TOOLKIT_LOGGERS]
    saved = [(lg.handlers[:], lg.propagate) for lg in loggers]
    show_warning = warnings.showwarning

    def to_screen(message, category, filename, lineno, file=None, line=None):
        screen.write(warnings.formatwarning(message, category, filename, lineno, line))

    for lg in loggers:
        lg.handlers = [handler]
        lg.propagate = False
    warnings.showwarning = to_screen
    try:
        with native_stderr_to(path), contextlib.redirect_stderr(open(path, "a", encoding="utf-8", buffering=1)) as f:
            try:
                yield screen
            finally:
                f.close()
    finally:
        warnings.showwarning = show_warning
        for lg, (handlers, propagate) in zip(loggers, saved, strict=True):
            lg.handlers, lg.propagate = handlers, propagate
        handler.close()
        if own_screen:
            screen.close()
