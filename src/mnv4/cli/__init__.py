"""The ``mnv4`` command: a thin shell over the library. One module per sub-command in this package.

Every module here that defines ``register(subparsers)`` is a sub-command: ``register`` adds its parser and sets
``func`` to a callable taking the parsed args and returning an exit code. Heavy imports stay inside those callables
so ``mnv4 --help`` is instant. Modules whose names start with "_" are shared helpers, not sub-commands.

Errors: a ``mnv4.errors.UserError`` (bad input the user can fix) prints as one line, ``mnv4 CMD: error: ...``, exit
code 2; so does a flag the parser refuses (unknown, missing, not a number, out of its range: ``_common.number``),
without argparse's usage block. Every other exception keeps its traceback: it is a bug or an environment failure
(CUDA out of memory, a broken install) that has to be seen in full.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import re
import sys

# The order ``mnv4 --help`` lists sub-commands in; any other command module comes after these, by name.
ORDER = ("models", "predict", "eval", "export", "bench", "roofline", "train", "search", "ablate", "detect", "segment")


def command_modules() -> list[str]:
    names = [m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")]
    return sorted(names, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))


class ArgumentError(Exception):
    """A flag the parser refused; ``main`` prints it as one line."""

    def __init__(self, prog: str, message: str) -> None:
        super().__init__(message)
        self.prog = prog


class Parser(argparse.ArgumentParser):
    """argparse's parser, whose errors are one line that points at ``--help`` instead of the usage block; the
    sub-command parsers are of the same class (``add_subparsers`` uses the parent's)."""

    def error(self, message: str):
        message = re.sub(r"^argument (\S+): must be", r"\1 must be", message)  # "--topk must be >= 1, got 0"
        raise ArgumentError(self.prog, f"{message} (see {self.prog} --help)")


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = Parser(prog="mnv4", description="MobileNetV4 for PyTorch: models, tools and checks.")
    parser.add_argument("--version", action="version", version=f"mnv4 {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in command_modules():
        module = importlib.import_module(f".{name}", __name__)
        if hasattr(module, "register"):
            module.register(sub)
    return parser


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Run ``mnv4 ARGV``. ``prog`` names the program in the one-line errors (``python -m mnv4.train`` runs
    ``main(['train', ...], prog='mnv4.train')``)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except ArgumentError as err:
        command = " ".join(err.prog.split()[:2])  # "mnv4 segment", as a UserError names it; the hint names the action
        print(f"{prog or command}: error: {err}", file=sys.stderr)
        return 2
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from ..errors import UserError

    try:
        return int(args.func(args) or 0)
    except UserError as err:  # bad input: one clear line. Anything else (a bug, out of memory) keeps its traceback
        print(f"{prog or 'mnv4 ' + args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
