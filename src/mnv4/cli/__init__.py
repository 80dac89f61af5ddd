"""The ``mnv4`` command: a thin shell over the library. One module per sub-command, each with ``register``.

A command module defines ``register(subparsers)``, which adds its parser and sets ``func`` to a callable taking the
parsed args and returning an exit code. Heavy imports stay inside those callables so ``mnv4 --help`` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Sub-command modules, in the order ``mnv4 --help`` lists them.
COMMANDS = ("models",)


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(prog="mnv4", description="MobileNetV4 for PyTorch: models, tools and checks.")
    parser.add_argument("--version", action="version", version=f"mnv4 {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f".{name}", __name__).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, RuntimeError) as err:  # bad input: one clear line, no traceback
        print(f"mnv4 {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
