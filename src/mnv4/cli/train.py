"""``mnv4 train``: train (or fine-tune, or distil) a MobileNetV4 from a recipe; a thin shell over ``mnv4.train``."""

from __future__ import annotations

import argparse
import sys

from ..train.config import TrainConfig
from ._common import BATCH, Flag, add_flag_table, flag_values, run_command, run_flags

FLAGS: list[Flag] = [
    Flag("--model", "model", "model name (mnv4 models) or spec file; default: the recipe's"),
    Flag("--data", "data", "ImageFolder root holding train/<class>/* and val/<class>/*"),
    *run_flags("out", "epochs", "global_batch", "batch_size", "max_steps", "lr",
               global_batch="optimiser batch of all processes (default: the recipe's, or fitted to the data)",
               out="output folder: checkpoints, CSV/TensorBoard logs, model.safetensors (a new run refuses a folder "
                   "that holds another run: --resume auto continues it)"),
    *run_flags("warmup_epochs", "grad_clip", "weight_decay",
               warmup_epochs="linear warm-up epochs (default: the recipe's, or min(1, epochs/10))",
               grad_clip="clip the global gradient norm to this (default 1.0; 0 = off, as the paper)",
               weight_decay="AdamW decoupled weight decay (not on BN/bias/layer scale)"),
    Flag("--label-smoothing", "label_smoothing", "label smoothing"),
    Flag("--dropout", "dropout", "dropout before the classifier"),
    *run_flags("drop_path", "ema_decay", "image_size", "randaug_layers"),
    Flag("--mixup-prob", "mixup_prob", "probability of Mixup/CutMix per batch"),
    *run_flags("pretrained"),
    Flag("--teacher", "teacher", "distil from a teacher: model name (pretrained) or a .safetensors / .pt file"),
    Flag("--teacher-model", "teacher_model", "architecture of a teacher file that does not record it"),
    Flag("--kd-temperature", "kd_temperature", "distillation temperature"),
    Flag("--kd-alpha", "kd_alpha", "weight of the distillation term (1 - alpha for the labels)"),
    *run_flags("soft_labels", soft_labels="offline distillation: a file from --precompute-soft-labels"),
    Flag("--qat", "qat", "quantization-aware training: fine-tune --pretrained weights with int8 fake-quant, then "
                         "write model_int8.pte (ExecuTorch) and model_int8.onnx (ONNX Runtime) to --out"),
    *run_flags("device", "precision",
               precision="fp32, bf16 or fp16 (autocast; fp16 uses a GradScaler); default: bf16 on CUDA, fp32 on the "
                         "CPU"),
    Flag("--data-pipeline", "data_pipeline", "'cpu' (PIL + workers), 'gpu' (torchvision nvJPEG decode + GPU crops) "
                                             "or 'dali' (NVIDIA DALI: decode fused with the augmentations)"),
    Flag("--dali-threads", "dali_threads", "data_pipeline 'dali': DALI's CPU threads per process"),
    *run_flags("workers", "seed", "threads", "resume", "save_every_steps", "keep_last", "log_every"),
    Flag("--channels-last", "channels_last", "channels_last memory format (default: on CUDA)"),
    Flag("--compile", "compile", "torch.compile the model (default: on CUDA; --no-compile turns it off)"),
    *run_flags("sync_bn", "deterministic", "progress", "tensorboard"),
]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--recipe", default=None, help="a shipped recipe name (see --list-recipes) or a .toml file")
    p.add_argument("--list-recipes", action="store_true", help="print the shipped recipes and exit")
    add_flag_table(p, FLAGS, TrainConfig, "bn_momentum=0.003 --set hflip=false")
    p.add_argument(
        "--precompute-soft-labels",
        metavar="FILE",
        default=None,
        help="offline distillation step 1: label augmented crops with --teacher into FILE, then exit",
    )
    p.add_argument("--replicas", type=BATCH, default=1, help="augmented copies per image for --precompute-soft-labels")


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


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    from ..train.config import load_config

    return load_config(args.recipe, **flag_values(args, FLAGS, TrainConfig))


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
    """Entry point of ``python -m mnv4.train`` (and ``torchrun ... -m mnv4.train``): ``mnv4 train ...``."""
    return run_command("train", "mnv4.train", argv)
