"""``mnv4 train``: train (or fine-tune, or distil) a MobileNetV4 from a recipe; a thin shell over ``mnv4.train``."""

from __future__ import annotations

import argparse
import sys

# flag -> (TrainConfig field, type, help); None type = boolean --flag/--no-flag
OVERRIDES: list[tuple[str, str, object, str]] = [
    ("--model", "model", str, "model name (mnv4 models); default: the recipe's"),
    ("--data", "data", str, "ImageFolder root holding train/<class>/* and val/<class>/*"),
    ("--out", "out", str, "output folder: checkpoints, CSV/TensorBoard logs, model.safetensors"),
    ("--epochs", "epochs", float, "training epochs (the cosine schedule follows)"),
    ("--global-batch", "global_batch", int, "optimiser batch over all processes (the recipe's)"),
    ("--batch-size", "batch_size", int, "images per process per forward; the rest is gradient accumulation"),
    ("--max-steps", "max_steps", int, "stop after this many optimiser steps"),
    ("--lr", "lr", float, "peak learning rate"),
    ("--warmup-epochs", "warmup_epochs", float, "linear warm-up epochs"),
    ("--weight-decay", "weight_decay", float, "AdamW decoupled weight decay (not on BN/bias/layer scale)"),
    ("--label-smoothing", "label_smoothing", float, "label smoothing"),
    ("--dropout", "dropout", float, "dropout before the classifier"),
    ("--drop-path", "drop_path", float, "peak stochastic-depth rate"),
    ("--ema-decay", "ema_decay", float, "EMA decay (0 = off)"),
    ("--image-size", "image_size", int, "training / validation resolution (default: the model's native one)"),
    ("--randaug-layers", "randaug_layers", int, "RandAugment ops per image (0 = off)"),
    ("--mixup-prob", "mixup_prob", float, "probability of Mixup/CutMix per batch"),
    ("--pretrained", "pretrained", str, "start from pretrained weights: 'true' (default tag) or a weights file"),
    ("--teacher", "teacher", str, "distil from a teacher: model name (pretrained) or a .safetensors / .pt file"),
    ("--teacher-model", "teacher_model", str, "architecture of a teacher file that does not record it"),
    ("--kd-temperature", "kd_temperature", float, "distillation temperature"),
    ("--kd-alpha", "kd_alpha", float, "weight of the distillation term (1 - alpha for the labels)"),
    ("--soft-labels", "soft_labels", str, "offline distillation: a file from --precompute-soft-labels"),
    ("--qat", "qat", None, "quantization-aware training: fine-tune --pretrained weights with int8 fake-quant, "
     "then write model_int8.pte (ExecuTorch) and model_int8.onnx (ONNX Runtime) to --out"),
    ("--device", "device", str, "'auto', 'cpu', 'cuda' or 'cuda:N'"),
    ("--precision", "precision", str, "fp32, bf16 or fp16 (autocast; fp16 uses a GradScaler)"),
    ("--data-pipeline", "data_pipeline", str, "'cpu' (PIL + workers) or 'gpu' (nvJPEG decode + GPU crops)"),
    ("--workers", "workers", int, "data-loader worker processes per rank"),
    ("--seed", "seed", int, "seed of data order, augmentation, dropout and init"),
    ("--threads", "threads", int, "torch CPU threads"),
    ("--resume", "resume", str, "checkpoint file, or 'auto' for the newest ckpt-*.pt in --out"),
    ("--save-every-steps", "save_every_steps", int, "checkpoint every N steps as well as every epoch"),
    ("--keep-last", "keep_last", int, "step checkpoints kept (best.pt is kept apart)"),
    ("--log-every", "log_every", int, "steps between log rows"),
    ("--channels-last", "channels_last", None, "channels_last memory format"),
    ("--compile", "compile", None, "torch.compile the model"),
    ("--sync-bn", "sync_bn", None, "SyncBatchNorm across processes (CUDA)"),
    ("--deterministic", "deterministic", None, "torch.use_deterministic_algorithms(True)"),
    ("--progress", "progress", None, "progress bar"),
    ("--tensorboard", "tensorboard", None, "TensorBoard scalars next to the CSV logs"),
]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--recipe", default=None, help="a shipped recipe name (see --list-recipes) or a .toml file")
    p.add_argument("--list-recipes", action="store_true", help="print the shipped recipes and exit")
    for flag, dest, kind, help_text in OVERRIDES:
        if kind is None:
            p.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            p.add_argument(flag, dest=dest, type=kind, default=None, help=help_text)
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="set any TrainConfig field (TOML value), e.g. --set bn_momentum=0.003 --set hflip=false",
    )
    p.add_argument(
        "--precompute-soft-labels",
        metavar="FILE",
        default=None,
        help="offline distillation step 1: label augmented crops with --teacher into FILE, then exit",
    )
    p.add_argument("--replicas", type=int, default=1, help="augmented copies per image for --precompute-soft-labels")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train / fine-tune / distil a model from a recipe (paper Tab. 10)",
        description="Train a MobileNetV4 on an ImageFolder (DIR/train/<class>/*, DIR/val/<class>/*). Recipes are "
        "TOML files of TrainConfig fields; flags override them. Multi-GPU / multi-node: "
        "torchrun --nproc-per-node N -m mnv4.train <same flags>.",
    )
    add_arguments(p)
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace):
    from ..train.config import FIELDS, load_config, tomllib

    overrides = {dest: getattr(args, dest) for _, dest, _, _ in OVERRIDES}
    if overrides.get("pretrained") is not None and overrides["pretrained"].lower() in ("true", "false"):
        overrides["pretrained"] = overrides["pretrained"].lower() == "true"
    for item in args.set:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in FIELDS:
            raise ValueError(f"--set {item!r}: expected FIELD=VALUE with FIELD a TrainConfig field")
        try:
            overrides[key] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            overrides[key] = value  # a bare string
    return load_config(args.recipe, **overrides)


def run(args: argparse.Namespace) -> int:
    import logging

    from ..train import list_recipes, load_teacher, precompute_soft_labels, train

    if args.list_recipes:
        print("\n".join(list_recipes()))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    cfg = config_from_args(args)
    if not cfg.data:
        raise ValueError("--data DIR is required (an ImageFolder root with train/ and val/)")
    if args.precompute_soft_labels:
        from pathlib import Path

        from ..data import scan_image_folder

        if not cfg.teacher:
            raise ValueError("--precompute-soft-labels needs --teacher NAME_or_FILE")
        train_dir = Path(cfg.data) / "train"
        classes = scan_image_folder(train_dir)[1]
        teacher = load_teacher(cfg.teacher, len(classes), cfg.teacher_model)
        path = precompute_soft_labels(
            teacher,
            train_dir,
            cfg,
            args.precompute_soft_labels,
            args.replicas,
            image_size=cfg.image_size or teacher.spec.resolution,
        )
        print(f"wrote {path}")
        return 0
    if cfg.qat:
        from ..export.qat import train_qat

        qat = train_qat(cfg)
        result = qat.train
        print(f"int8 files (quantization-aware): {qat.files.executorch}, {qat.files.onnx}")
    else:
        result = train(cfg)
    final = result.final
    if final:
        summary = ", ".join(f"{k} {v:.4g}" for k, v in final.items() if isinstance(v, float))
        print(f"done: {result.global_step} steps; {summary}; weights: {result.weights}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m mnv4.train`` (errors as one line, like ``mnv4``)."""
    parser = argparse.ArgumentParser(prog="python -m mnv4.train", description="Train a MobileNetV4 (see mnv4 train).")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"mnv4.train: error: {err}", file=sys.stderr)
        return 2
