"""``mnv4 train``: train (or fine-tune, or distil) a MobileNetV4 from a recipe; a thin shell over ``mnv4.train``."""

from __future__ import annotations

import argparse
import sys

from ._common import add_flag_table, flag_values

# flag -> (TrainConfig field, type, help); None type = boolean --flag/--no-flag
OVERRIDES: list[tuple[str, str, object, str]] = [
    ("--model", "model", str, "model name (mnv4 models); default: the recipe's"),
    ("--data", "data", str, "ImageFolder root holding train/<class>/* and val/<class>/*"),
    ("--out", "out", str, "output folder: checkpoints, CSV/TensorBoard logs, model.safetensors"),
    ("--epochs", "epochs", float, "training epochs (the cosine schedule follows)"),
    (
        "--global-batch",
        "global_batch",
        int,
        "optimiser batch of all processes (default: recipe's, or fitted to the data)",
    ),
    ("--batch-size", "batch_size", int, "images per process per forward; the rest is gradient accumulation"),
    ("--max-steps", "max_steps", int, "stop after this many optimiser steps"),
    ("--lr", "lr", float, "peak learning rate"),
    ("--warmup-epochs", "warmup_epochs", float, "linear warm-up epochs (default: the recipe's, or min(1, epochs/10))"),
    ("--grad-clip", "grad_clip", float, "clip the global gradient norm to this (default 1.0; 0 = off, as the paper)"),
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
    ("--precision", "precision", str, "fp32, bf16 or fp16 (autocast; fp16 uses a GradScaler); default: bf16 on CUDA, "
                                      "fp32 on the CPU"),
    ("--data-pipeline", "data_pipeline", str, "'cpu' (PIL + workers), 'gpu' (torchvision nvJPEG decode + GPU crops) "
                                              "or 'dali' (NVIDIA DALI: decode fused with the augmentations)"),
    ("--dali-threads", "dali_threads", int, "data_pipeline 'dali': DALI's CPU threads per process"),
    ("--workers", "workers", int, "data-loader worker processes per rank"),
    ("--seed", "seed", int, "seed of data order, augmentation, dropout and init"),
    ("--threads", "threads", int, "torch CPU threads"),
    ("--resume", "resume", str, "a checkpoint file, or 'auto': the newest ckpt-*.pt in --out, a new run if none"),
    ("--save-every-steps", "save_every_steps", int, "checkpoint every N steps as well as every epoch"),
    ("--keep-last", "keep_last", int, "step checkpoints kept (best.pt is kept apart)"),
    ("--log-every", "log_every", int, "steps between log rows"),
    ("--channels-last", "channels_last", None, "channels_last memory format (default: on CUDA)"),
    ("--compile", "compile", None, "torch.compile the model (default: on CUDA; --no-compile turns it off)"),
    ("--sync-bn", "sync_bn", None, "SyncBatchNorm across processes (CUDA)"),
    ("--deterministic", "deterministic", None, "torch.use_deterministic_algorithms(True)"),
    ("--progress", "progress", None, "progress bar"),
    ("--tensorboard", "tensorboard", None, "TensorBoard scalars next to the CSV logs"),
]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--recipe", default=None, help="a shipped recipe name (see --list-recipes) or a .toml file")
    p.add_argument("--list-recipes", action="store_true", help="print the shipped recipes and exit")
    add_flag_table(p, OVERRIDES, "TrainConfig", "bn_momentum=0.003 --set hflip=false")
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
    from ..train.config import FIELDS, load_config

    overrides = flag_values(args, OVERRIDES, FIELDS, "TrainConfig")
    if isinstance(overrides.get("pretrained"), str) and overrides["pretrained"].lower() in ("true", "false"):
        overrides["pretrained"] = overrides["pretrained"].lower() == "true"
    return load_config(args.recipe, **overrides)


def run(args: argparse.Namespace) -> int:
    import logging

    from ..errors import UserError
    from ..train import list_recipes, load_teacher, precompute_soft_labels, train

    if args.list_recipes:
        print("\n".join(list_recipes()))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    cfg = config_from_args(args)
    if not cfg.data:
        raise UserError("--data DIR is required (an ImageFolder root with train/ and val/)")
    if args.precompute_soft_labels:
        from pathlib import Path

        from ..train.inputs import train_classes

        if not cfg.teacher:
            raise UserError("--precompute-soft-labels needs --teacher NAME_or_FILE")
        classes = train_classes(cfg)
        teacher = load_teacher(cfg.teacher, len(classes), cfg.teacher_model)
        # the crops are the student's (cfg.model at cfg.image_size): the student run checks that they match
        path = precompute_soft_labels(
            teacher, Path(cfg.data) / "train", cfg, args.precompute_soft_labels, args.replicas
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
    """Entry point of ``python -m mnv4.train``. Bad input (``UserError``) is one line and exit code 2, like ``mnv4``;
    anything else (a bug, CUDA out of memory) keeps its traceback."""
    from ..errors import UserError

    parser = argparse.ArgumentParser(prog="python -m mnv4.train", description="Train a MobileNetV4 (see mnv4 train).")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except UserError as err:
        print(f"mnv4.train: error: {err}", file=sys.stderr)
        return 2
