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
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from ..engine.config import AT_LEAST_ONE, FRACTION, NON_NEGATIVE, OPEN_FRACTION, POSITIVE, Range
from ..errors import UserError
from ..specs import MIN_INPUT_SIZE, is_spec_file

DEFAULT_MODEL = "mobilenetv4_conv_small"


def number(kind: type, allowed: Range | None = None):
    """argparse's ``type`` for a numeric flag that is not a config field (those are checked by
    ``mnv4.engine.config.check_fields``): the text read as ``kind`` (int or float), finite, inside ``allowed``.
    Anything else is refused by the parser, in one line, before the command starts."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {'an integer' if kind is int else 'a number'}, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
        if allowed is not None and value not in allowed:
            raise argparse.ArgumentTypeError(f"must be {allowed}, got {text}")
        return value

    parse.__name__ = kind.__name__
    return parse


# The ranges the commands' own numeric flags share
BATCH = number(int, AT_LEAST_ONE)  # --batch-size, --runs, --threads, ...
COUNT = number(int, NON_NEGATIVE)  # --workers, --warmup, ...
SIZE = number(int, Range(MIN_INPUT_SIZE))  # an input side in pixels
SCORE = number(float, FRACTION)  # a score threshold, a share of images
POSITIVE_NUMBER = number(float, POSITIVE)
TOLERANCE = number(float, NON_NEGATIVE)
CROP = number(float, OPEN_FRACTION)
OPSET = number(int, Range(17))  # ONNX: mnv4.export.onnx.MIN_OPSET (not imported here: it pulls in the exporters)

@dataclass(frozen=True)
class Flag:
    """One command-line flag of a run's config: the flag, the config field it sets, its help. Its type comes from the
    field's annotation (``bool``: ``--flag/--no-flag``); it defaults to ``None``, "not given", so a recipe's value
    stays unless the flag is on the command line. ``aliases``: older spellings that still work, left out of the help
    (the help shows one form)."""

    flag: str
    field: str
    help: str
    aliases: tuple[str, ...] = ()


# The flags the run commands share (mnv4 train, detect train, search, segment train), one help text each. A command's
# table picks these by field name (``run_flags``) and adds its own rows.
RUN_FLAGS: dict[str, Flag] = {f.field: f for f in (
    Flag("--out", "out", "output folder: checkpoints, CSV/TensorBoard logs and the final weights (a new run refuses "
                         "a folder that holds another run: --resume auto continues it)"),
    Flag("--pretrained", "pretrained", "start from pretrained weights: 'true' (the tag's) or a weights file"),
    Flag("--image-size", "image_size", "training / validation resolution (default: the model's)"),
    Flag("--epochs", "epochs", "training epochs (the cosine schedule follows)"),
    Flag("--global-batch", "global_batch", "optimiser batch over all processes"),
    Flag("--batch-size", "batch_size", "images per process per forward; the rest is gradient accumulation"),
    Flag("--max-steps", "max_steps", "stop after this many optimiser steps (the schedule still spans --epochs)"),
    Flag("--lr", "lr", "peak learning rate"),
    Flag("--weight-decay", "weight_decay", "weight decay (not on BN, biases, layer scale)"),
    Flag("--warmup-epochs", "warmup_epochs", "linear warm-up epochs"),
    Flag("--grad-clip", "grad_clip", "clip the global gradient norm to this (0 = off)"),
    Flag("--ema-decay", "ema_decay", "EMA decay (0 = off)"),
    Flag("--drop-path", "drop_path", "peak stochastic-depth rate"),
    Flag("--randaug-layers", "randaug_layers", "RandAugment ops per image (0 = off)"),
    Flag("--soft-labels", "soft_labels", "offline distillation: a file from `mnv4 train --precompute-soft-labels`"),
    Flag("--device", "device", "'auto', 'cpu', 'cuda' or 'cuda:N'"),
    Flag("--precision", "precision", "fp32, bf16 or fp16 (autocast; fp16 uses a GradScaler)"),
    Flag("--workers", "workers", "data-loader worker processes per rank"),
    Flag("--seed", "seed", "seed of data order, augmentation, dropout and initialisation"),
    Flag("--threads", "threads", "torch CPU threads"),
    Flag("--resume", "resume", "a checkpoint file, or 'auto': the newest ckpt-*.pt in --out (a new run if none)"),
    Flag("--save-every-steps", "save_every_steps", "checkpoint every N steps as well as at every epoch's end"),
    Flag("--keep-last", "keep_last", "step checkpoints kept (best.pt is kept apart)"),
    Flag("--log-every", "log_every", "steps between log rows"),
    Flag("--sync-bn", "sync_bn", "SyncBatchNorm across processes (CUDA)"),
    Flag("--deterministic", "deterministic", "torch.use_deterministic_algorithms(True) (bit-exact CPU runs)"),
    Flag("--progress", "progress", "progress bar"),
    Flag("--tensorboard", "tensorboard", "TensorBoard scalars next to the CSV logs"),
)}


def run_flags(*fields: str, **help_texts: str) -> list[Flag]:
    """The shared flags of ``fields`` (``RUN_FLAGS``), in that order; ``help_texts`` replace a field's help where a
    command says more (e.g. what its --out folder holds)."""
    return [Flag(RUN_FLAGS[f].flag, f, help_texts.get(f, RUN_FLAGS[f].help)) for f in fields]


def flag_type(config, field: str):
    """argparse's ``type`` for a config field: from its annotation (None for a bool switch)."""
    annotation = str(config.fields()[field].type).replace(" ", "")
    kinds = annotation.split("|")
    if kinds[0] == "bool":
        return None
    if "str" in kinds:
        return str
    return float if "float" in kinds else int if "int" in kinds else str


def add_flag_table(p: argparse.ArgumentParser, table: list[Flag], config, set_example: str) -> None:
    """The table's flags for the dataclass ``config`` (a ``RunConfig``), plus ``--set FIELD=VALUE`` for any other
    field."""
    for row in table:
        kind = flag_type(config, row.field)
        for flag, help_text in ((row.flag, row.help), *((alias, argparse.SUPPRESS) for alias in row.aliases)):
            if kind is None:
                p.add_argument(flag, dest=row.field, action=argparse.BooleanOptionalAction, default=None,
                               help=help_text)
            else:
                p.add_argument(flag, dest=row.field, type=kind, default=None, help=help_text)
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help=f"set any {config.__name__} field (a TOML value), e.g. --set {set_example}")


def flag_values(args: argparse.Namespace, table: list[Flag], config) -> dict:
    """The config values the command line gives: the table's flags (``None`` where not given), then ``--set``. A
    field that takes a string or a bool (``pretrained``) reads 'true' / 'false' as the bool."""
    from ..recipe_files import parse_set

    fields = config.fields()
    values = {row.field: getattr(args, row.field) for row in table}
    values.update(parse_set(args.set, fields, config.__name__))
    for name, value in values.items():
        if isinstance(value, str) and value.lower() in ("true", "false") and "bool" in str(fields[name].type):
            values[name] = value.lower() == "true"
    return values


def run_command(command: str, prog: str, argv: list[str] | None) -> int:
    """The entry point of ``python -m mnv4.<package> ...`` (what ``torchrun -m`` runs): ``mnv4 COMMAND ...`` with
    the same flags and the same one-line errors, under the module's own name."""
    from . import main

    return main([command, *(sys.argv[1:] if argv is None else argv)], prog=prog)


def add_model_option(p: argparse.ArgumentParser, help_text: str, default: str | None = None,
                     positional: bool = False) -> None:
    """``--model NAME``: how every command names its model (variant, variant.tag or spec file). ``positional``: the
    command used to take the model as its first argument; that spelling still works but is not in the help
    (``model_name`` reads either)."""
    if positional:
        p.add_argument("model_positional", nargs="?", metavar="MODEL", help=argparse.SUPPRESS)
    p.add_argument("--model", default=default, help=help_text)


def model_name(args: argparse.Namespace, required: bool = True) -> str | None:
    """The model ``--model`` (or the old positional spelling) names; a ``UserError`` when both disagree, or when none
    is given and one is required."""
    positional = getattr(args, "model_positional", None)
    if positional and args.model and positional != args.model:
        raise UserError(f"the model is named twice ({positional!r} and --model {args.model!r}); give --model once")
    name = args.model or positional
    if required and not name:
        raise UserError("name the model with --model (a variant, variant.tag or spec file; see `mnv4 models`)")
    return name


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
    add_model_option(
        p, "variant or variant.tag (see `mnv4 models`, mnv4.list_pretrained()); without --weights the tag's weights "
        "come from the Hugging Face hub cache (a bare variant = its default tag). Default: %(default)s",
        default=DEFAULT_MODEL,
    )
    add_weights_args(p)
    p.add_argument("--device", default="cpu", help="torch device, e.g. cuda or cuda:1 (default: %(default)s)")
    p.add_argument("--test-res", action="store_true", help="use the tag's larger test_input_size / test_crop_pct")
    p.add_argument("--img-size", type=SIZE, help="override the input size (square)")
    p.add_argument("--crop-pct", type=CROP, help="override the centre-crop fraction (resize to size / crop_pct)")


class _StderrHandler(logging.StreamHandler):
    """Writes to ``sys.stderr`` as it is at each message, not as it was when the handler was made (``main`` may run
    many times in one process, under redirected streams)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):  # StreamHandler.__init__ assigns it; the property always answers sys.stderr
        pass


def log_to_stderr(timestamps: bool = False) -> None:
    """mnv4's log lines (data repairs and skips, training progress) on stderr, one line each: ``[time]
    mnv4.<part>: message`` (a run's commands: ``detect``, ``segment``)."""
    log = logging.getLogger("mnv4")
    handler = next((h for h in log.handlers if isinstance(h, _StderrHandler)), None)
    if handler is None:
        handler = _StderrHandler()
        log.addHandler(handler)
    handler.setFormatter(logging.Formatter(("%(asctime)s " if timestamps else "") + "%(name)s: %(message)s"))
    log.setLevel(logging.INFO)


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
    name = name or model_name(args)
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

    model = load_model(args)
    cfg = data_config(model, use_test_size=args.test_res, img_size=args.img_size, crop_pct=args.crop_pct)
    return model, cfg


def read_lines(path: str | os.PathLike, flag: str) -> list[str]:
    """The non-blank lines of a text file given by ``flag`` (e.g. class names, one per line)."""
    check_input_file(path, flag)
    return [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
