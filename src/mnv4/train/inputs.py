"""A run's inputs: the model's evaluation protocol, the training and validation data sets, and their loaders.

Validation uses the same transform as ``mnv4 eval``: ``eval_transform(data_config(model, img_size=<training
size>))`` — the model's (its tag's) interpolation, crop fraction, mean and std — unless the config sets
``val_crop_pct`` / ``val_interpolation`` / ``mean`` / ``std``. The training transform normalises with the same mean
and std. ``resolve_model_defaults`` writes these values into the config, so checkpoints and logs say what was used.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..engine.distributed import DistContext
from ..errors import UserError
from ..transforms import DataConfig, data_config, eval_transform
from .config import TrainConfig
from .data import BadFileLog, EncodedImageDataset, GpuAugment, ImageFolderDataset, collate, train_transform

log = logging.getLogger("mnv4.train")


def eval_config(cfg: TrainConfig, model: nn.Module | str) -> DataConfig:
    """The validation protocol: the model's data config at the training size, with the config's overrides."""
    return data_config(
        model,
        img_size=cfg.image_size,
        crop_pct=cfg.val_crop_pct,
        interpolation=cfg.val_interpolation,
        mean=cfg.mean,
        std=cfg.std,
    )


def resolve_model_defaults(cfg: TrainConfig, model: nn.Module | str) -> TrainConfig:
    """``cfg`` with the fields left to the model filled from its data config: image size, mean/std, validation
    crop fraction and interpolation."""
    protocol = eval_config(cfg, model)
    return dataclasses.replace(
        cfg,
        image_size=protocol.img_size,
        mean=tuple(protocol.mean),
        std=tuple(protocol.std),
        val_crop_pct=protocol.crop_pct,
        val_interpolation=protocol.interpolation,
    )


def train_classes(cfg: TrainConfig) -> list[str]:
    root = Path(cfg.data)
    if not (root / "train").is_dir():
        raise UserError(f"{str(root / 'train')!r} does not exist: --data must hold train/<class>/*.jpg")
    return ImageFolderDataset(root / "train", None).classes


@dataclass
class TrainInputs:
    """The data sets of a run (``cfg`` already resolved), the GPU augmenter when ``data_pipeline='gpu'``, and the
    logs of undecodable files (one for training, where they are replaced, one for validation, where they are
    skipped)."""

    train: ImageFolderDataset
    val: ImageFolderDataset | None
    protocol: DataConfig
    gpu_augment: GpuAugment | None
    train_bad: BadFileLog
    val_bad: BadFileLog
    dali: object | None = None  # data_pipeline='dali': the DaliTrainLoader, built at the first epoch

    @classmethod
    def build(cls, cfg: TrainConfig, ctx: DistContext) -> TrainInputs:
        root = Path(cfg.data)
        protocol = DataConfig(  # the resolved config holds the model's protocol (resolve_model_defaults)
            input_size=(3, cfg.image_size, cfg.image_size),
            interpolation=cfg.val_interpolation,
            mean=cfg.mean,
            std=cfg.std,
            crop_pct=cfg.val_crop_pct,
        )
        train_bad = BadFileLog("replaced undecodable training image")
        val_bad = BadFileLog("skipped undecodable validation image")
        gpu_augment = None
        if cfg.data_pipeline == "gpu":
            if ctx.device.type != "cuda" and ctx.is_main:
                log.warning("data_pipeline='gpu' without CUDA: decoding and augmenting on the CPU in the main process")
            train: ImageFolderDataset = EncodedImageDataset(root / "train", seed=cfg.seed)
            gpu_augment = GpuAugment(cfg.image_size, cfg, ctx.device, bad_log=train_bad)
        elif cfg.data_pipeline == "dali":  # the files and labels; DALI reads them in train_batches
            from .dali import require_dali

            require_dali()  # before any work: the install command, not a failure at the first epoch
            train = ImageFolderDataset(root / "train", None, seed=cfg.seed)
        else:
            train = ImageFolderDataset(root / "train", train_transform(cfg.image_size, cfg), seed=cfg.seed)
        val = None
        if (root / "val").is_dir():
            val = ImageFolderDataset(root / "val", eval_transform(protocol), replace_bad=False)
            if val.classes != train.classes:
                raise UserError(
                    f"val/ classes {val.classes[:5]}... differ from train/ classes {train.classes[:5]}...: "
                    "both need the same class folders"
                )
        elif ctx.is_main:
            log.warning("%s has no val/ folder: no validation", root)
        return cls(train, val, protocol, gpu_augment, train_bad, val_bad)

    def train_batches(self, sampler, cfg: TrainConfig, device: torch.device, batch_size: int):
        """One epoch of micro-batches ``(images, labels, indices, aug_epochs, bad)`` in ``sampler``'s order, from
        the pipeline ``cfg.data_pipeline`` names (DALI's batch is the plan's micro-batch ``batch_size``)."""
        if cfg.data_pipeline == "dali":
            if self.dali is None:
                from .dali import DaliTrainLoader

                self.dali = DaliTrainLoader(Path(cfg.data) / "train", cfg.image_size, cfg, device, batch_size,
                                            workers=cfg.workers, threads=cfg.dali_threads,
                                            channels_last=cfg.channels_last)
            return iter(self.dali.epoch(sampler))
        return iter(make_loader(self.train, sampler, cfg, device))


def make_loader(dataset, batch_sampler, cfg: TrainConfig, device: torch.device) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(
        dataset,
        batch_sampler=batch_sampler,
        num_workers=cfg.workers,
        collate_fn=collate,
        pin_memory=device.type == "cuda" and cfg.data_pipeline == "cpu",
        persistent_workers=False,
    )
