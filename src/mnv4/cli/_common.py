"""What several sub-commands share: the model arguments and the model they name, output-file checks, logging.

One meaning of the weights arguments everywhere (``predict``, ``eval``, ``export``): ``--weights FILE`` loads a local
file; without it the tag's released weights come through the Hugging Face hub cache (a bare variant name means its
default tag; offline with nothing cached, the error says how to fetch the file). Random weights only on request
(``--random-weights``, for commands that offer it: latency and structure work).

Not a sub-command (the name starts with "_").
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from ..errors import UserError
from ..specs import MIN_INPUT_SIZE, is_spec_file

DEFAULT_MODEL = "mobilenetv4_conv_small"

# A command's config flags: (flag, config field, type -- None for a --flag/--no-flag switch --, help). Every flag
# defaults to None, "not given", so a recipe's value stays unless the flag is on the command line.
FlagTable = list[tuple[str, str, object, str]]


def add_flag_table(p: argparse.ArgumentParser, table: FlagTable, config_name: str, set_example: str) -> None:
    """The table's flags, plus ``--set FIELD=VALUE`` for any other field of the config."""
    for flag, dest, kind, help_text in table:
        if kind is None:
            p.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            p.add_argument(flag, dest=dest, type=kind, default=None, help=help_text)
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help=f"set any {config_name} field (a TOML value), e.g. --set {set_example}")


def flag_values(args: argparse.Namespace, table: FlagTable, fields, config_name: str) -> dict:
    """The config values the command line gives: the table's flags (``None`` where not given), then ``--set``."""
    from ..recipe_files import parse_set

    values = {dest: getattr(args, dest) for _, dest, _, _ in table}
    return {**values, **parse_set(args.set, fields, config_name)}


def add_weights_args(p: argparse.ArgumentParser, random_weights: bool = False) -> None:
    """``--weights FILE`` (and ``--random-weights`` when the command offers it)."""
    p.add_argument("--weights", metavar="FILE", help="local weights (.safetensors, or .pth/.bin read with "
                   "weights_only=True; timm train.py checkpoints too). Without it: the tag's released weights "
                   "from the Hugging Face hub cache")
    if random_weights:
        p.add_argument("--random-weights", action="store_true",
                       help="randomly initialised weights instead of the released ones (latency / structure only)")


def add_model_args(p: argparse.ArgumentParser) -> None:
    """``--model`` / ``--weights`` / ``--device`` and the preprocessing overrides, for ``predict`` and ``eval``."""
    p.add_argument(
        "--model", default=DEFAULT_MODEL,
        help="variant or variant.tag (see `mnv4 models`, mnv4.list_pretrained()); without --weights the tag's "
        "weights come from the Hugging Face hub cache (a bare variant = its default tag). Default: %(default)s",
    )
    add_weights_args(p)
    p.add_argument("--device", default="cpu", help="torch device, e.g. cuda or cuda:1 (default: %(default)s)")
    p.add_argument("--test-res", action="store_true", help="use the tag's larger test_input_size / test_crop_pct")
    p.add_argument("--img-size", type=int, help="override the input size (square)")
    p.add_argument("--crop-pct", type=float, help="override the centre-crop fraction (resize to size / crop_pct)")


class _StderrHandler(logging.StreamHandler):
    """Writes to ``sys.stderr`` as it is at each message, not as it was when the handler was made (``main`` may run
    many times in one process, under redirected streams)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):  # StreamHandler.__init__ assigns it; the property always answers sys.stderr
        pass


def show_mnv4_log() -> None:
    """Print mnv4's own log messages (a classifier reset, skipped images) as ``mnv4: ...`` lines, nobody else's."""
    log = logging.getLogger("mnv4")
    if not log.handlers:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("mnv4: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)


def check_input_file(path: str | os.PathLike | None, flag: str) -> None:
    """A UserError unless ``path`` (when given) is an existing file."""
    if path is not None and not Path(path).is_file():
        raise UserError(f"{flag} {path} " + ("is a folder, not a file" if Path(path).is_dir() else "does not exist"))


def load_model(args: argparse.Namespace, name: str | None = None, **kwargs):
    """The model the weights arguments name: ``--weights FILE``, else ``--random-weights`` (when the command has
    it: random weights made trained-like by ``mnv4.testing.make_nondegenerate`` -- BN statistics measured on noise,
    so activations keep unit scale and no float denormals distort latency), else the released weights of ``name``
    (default ``args.model``) through the hub cache. ``kwargs`` go to ``mnv4.create_model`` (e.g. ``num_classes``)."""
    from ..factory import create_model

    random_weights = getattr(args, "random_weights", False)
    if args.weights is not None and random_weights:
        raise UserError("choose one of --weights FILE and --random-weights")
    check_input_file(args.weights, "--weights")
    name = name or args.model
    offer = " or --random-weights (latency and structure work)" if hasattr(args, "random_weights") else ""
    if random_weights:
        from ..testing import make_nondegenerate

        print("note: --random-weights: the model is for latency and structure work only, not for predictions")
        model = create_model(name, **kwargs)
        size = (model.spec.resolution, model.spec.resolution)
        return make_nondegenerate(model, seed=0, input_size=size, batch_size=2, passes=1)
    if args.weights is None and is_spec_file(name):
        raise UserError(f"{name} is an architecture file: it has no released weights; pass --weights FILE{offer}")
    show_mnv4_log()
    try:
        return create_model(name, pretrained=args.weights or True, **kwargs)
    except FileNotFoundError as err:  # released weights not in the hub cache (offline)
        if args.weights is not None:
            raise
        raise UserError(f"{err}; or pass --weights FILE{offer}") from None


def model_from_args(args: argparse.Namespace):
    """(model, DataConfig) for the parsed ``add_model_args`` options."""
    from ..transforms import data_config

    if args.img_size is not None and args.img_size < MIN_INPUT_SIZE:
        raise UserError(f"--img-size must be >= {MIN_INPUT_SIZE}, got {args.img_size}")
    if args.crop_pct is not None and not 0 < args.crop_pct <= 1:
        raise UserError(f"--crop-pct must be in (0, 1], got {args.crop_pct}")
    model = load_model(args)
    cfg = data_config(model, use_test_size=args.test_res, img_size=args.img_size, crop_pct=args.crop_pct)
    return model, cfg


def read_lines(path: str | os.PathLike, flag: str) -> list[str]:
    """The non-blank lines of a text file given by ``flag`` (e.g. class names, one per line)."""
    check_input_file(path, flag)
    return [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def check_output_file(path: str | os.PathLike, flag: str = "--out") -> Path:
    """Check, before any work, that ``path`` can be written as a file: not a folder, and its nearest existing parent
    a writable folder (missing folders are created when writing). Returns it as a Path."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{flag} {path} is a folder; give a file name")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"{flag} {path}: {parent} is a file, not a folder")
    if not os.access(parent if not path.exists() else path, os.W_OK):
        raise UserError(f"{flag} {path} is not writable (permission denied)")
    return path


def write_text_file(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to a temporary file next to ``path``, then move it into place: a reader never sees half a file,
    and an old file survives a failed write."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")  # same folder: os.replace is atomic; umask applies
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
