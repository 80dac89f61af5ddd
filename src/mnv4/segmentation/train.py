"""Training a segmenter on mask folders or COCO masks: torchrun DDP, AMP, exact resume from atomic checkpoints, EMA,
CSV/TensorBoard logs, a progress bar.

Segmentation is a task on the shared run machinery (``mnv4.engine``): the step loop, its determinism (the data order
of each epoch and every crop come from ``(seed, epoch, index)`` through ``MicroBatchSampler`` and
``SegmentationDataset``; the draws of micro-batch ``c`` at step ``s`` -- stochastic depth -- from ``(seed, s, c)``),
checkpoints, exact resume, the NaN guard and the logs are the engine's. This module says what a step computes (the
pixel-wise cross-entropy, plus the aux head's) and how an epoch is judged (mIoU of the model and of its EMA on the
validation set, from one confusion matrix summed over the processes).

Library use::

    from mnv4.segmentation import load_segment_config, train_segmenter
    result = train_segmenter(load_segment_config("lraspp_torchvision", train_annotations=..., train_images=...))
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..engine import Engine, Optimization, OptimizerSettings, RunPlan, Task, claim_run_folder, staged_file
from ..engine.checkpoint import checkpoint_to_resume
from ..engine.device import autocast, device_defaults, make_ema, place_model, run_scope
from ..engine.distributed import DistContext, main_process_first
from ..engine.metrics import BadFileLog
from ..engine.seeds import micro_batch_loader
from ..errors import UserError
from .config import SegmentConfig, segment_config_from_dict
from .data import (
    CocoMasks,
    MaskFolder,
    SegmentationDataset,
    collate_segmentation,
    load_coco_masks,
    load_mask_folder,
    train_transform,
)
from .evaluate import evaluate_segmenter
from .loss import segmentation_loss
from .models import SegmenterSpec, create_segmenter, save_segmenter

log = logging.getLogger("mnv4.segmentation")

# what a checkpoint must agree on with the run that continues it
RESUME_KEYS = ("arch", "backbone", "num_classes", "output_stride", "aux", "inter_channels")


@dataclass
class SegmentTrainResult:
    out: Path
    global_step: int
    epochs_done: int
    history: list[dict] = field(default_factory=list)  # one row per epoch: losses, mIoU ...
    best_miou: float | None = None
    weights: Path | None = None  # out/model.safetensors (and model_ema.safetensors with EMA)
    spec: SegmenterSpec | None = None

    @property
    def final(self) -> dict:
        return self.history[-1] if self.history else {}


def train_segmenter(cfg: SegmentConfig) -> SegmentTrainResult:
    """Train the segmenter ``cfg`` describes on its training set, measuring mIoU on the validation set (if given)
    every ``eval_every`` epochs and after the last. Single process or one process per device under torchrun. Writes
    checkpoints, ``steps.csv`` / ``epochs.csv`` and ``model.safetensors`` to ``cfg.out`` (rank 0)."""
    cfg.check_training_data()
    with run_scope(cfg.device, cfg.threads, cfg.deterministic) as ctx:
        return _train_segmenter(cfg, ctx)


def load_split(cfg: SegmentConfig, split: str, categories: list[int] | None = None) -> MaskFolder | CocoMasks | None:
    """The ``split`` ('train' or 'val') data set of ``cfg``, read and checked (every mask once, the COCO file by
    ``load_coco_masks``); None when the config has none. ``categories``: the COCO ids the labels stand for (the
    training set's, so that validation labels mean the same)."""
    images = getattr(cfg, f"{split}_images")
    if not images:
        return None
    masks, annotations = getattr(cfg, f"{split}_masks"), getattr(cfg, f"{split}_annotations")
    if masks:
        return load_mask_folder(images, masks, cfg.num_classes, getattr(cfg, f"{split}_split") or None)
    wanted = categories if categories is not None else (list(cfg.categories) if cfg.categories else None)
    data = load_coco_masks(annotations, images, wanted, cfg.crowd)
    if cfg.num_classes is not None and cfg.num_classes != data.num_classes:
        raise UserError(f"--num-classes {cfg.num_classes}, but {annotations} gives {data.num_classes} (the "
                        f"background and {data.num_classes - 1} categories); leave --num-classes out for COCO data")
    return data


def class_names(cfg: SegmentConfig, data: MaskFolder | CocoMasks) -> list[str]:
    """The names the spec keeps: COCO's category names, or the ``class_names`` file's lines (one per class)."""
    if isinstance(data, CocoMasks):
        return list(data.class_names)
    if not cfg.class_names:
        return []
    names = [line.strip() for line in Path(cfg.class_names).read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(names) != data.num_classes:
        raise UserError(f"--class-names {cfg.class_names} has {len(names)} names for {data.num_classes} classes; "
                        "one line per class, in label order (the background first)")
    return names


def _train_segmenter(cfg: SegmentConfig, ctx: DistContext) -> SegmentTrainResult:
    out = claim_run_folder(cfg.out, cfg.resume, is_main=ctx.is_main)  # before any work
    cfg, notes = device_defaults(cfg, ctx.device, ("precision",))
    torch.manual_seed(cfg.seed)  # model init: identical on every rank
    train_data = load_split(cfg, "train")
    train_ids = train_data.category_ids[1:] if isinstance(train_data, CocoMasks) else None
    val_data = load_split(cfg, "val", train_ids)
    if val_data is not None and val_data.num_classes != train_data.num_classes:
        raise UserError(f"the validation set ({val_data.source}) has {val_data.num_classes} classes, the training "
                        f"set {train_data.num_classes}; they must label the same classes")
    spec = SegmenterSpec(cfg.arch, cfg.model, train_data.num_classes, cfg.output_stride, cfg.image_size,
                         cfg.inter_channels, cfg.aux, list(cfg.atrous_rates) if cfg.atrous_rates else None,
                         class_names(cfg, train_data), categories=list(train_ids or []))
    crop = cfg.crop_size or cfg.image_size
    transform = train_transform(crop, spec.mean, spec.std, (cfg.scale_min, cfg.scale_max), cfg.hflip,
                                spec.ignore_index, base_size=cfg.image_size)
    train_set = SegmentationDataset(train_data, transform, seed=cfg.seed)
    plan = RunPlan.build(cfg, len(train_set), ctx.world_size)

    model = place_model(create_segmenter(spec, pretrained_backbone=cfg.pretrained, drop_path_rate=cfg.drop_path),
                        ctx, sync_bn=cfg.sync_bn)
    settings = OptimizerSettings(cfg.optimizer, cfg.lr, cfg.weight_decay, (cfg.beta1, cfg.beta2), cfg.adam_eps,
                                 cfg.momentum)
    optim = Optimization.build(model, settings, ctx.device, plan.warmup_steps, plan.schedule_steps,
                               cfg.min_lr_fraction, cfg.precision, grad_clip=cfg.grad_clip, schedule=cfg.lr_schedule)
    task = SegmentationTask(cfg, ctx, plan, spec, train_set, val_data)
    engine = Engine(task, cfg, ctx, plan, model, optim, make_ema(model, cfg.ema_decay), tensorboard=cfg.tensorboard)

    with main_process_first(ctx):  # rank 0 sets unreadable checkpoints aside first
        found = checkpoint_to_resume(cfg.resume, out)
    if found is not None:
        engine.load(*reversed(found))
    elif cfg.resume and ctx.is_main:
        log.info("--resume auto: no checkpoint in %s yet, starting a new run", out)
    if ctx.is_main:
        log.info("training %s / %s on %d images (%d classes), %d px crops, output stride %d: %s", cfg.arch,
                 cfg.model, len(train_set), spec.num_classes, crop, cfg.output_stride, plan.describe())
        for note in notes:
            log.info("%s", note)
        warning = plan.too_short()
        if warning and not cfg.pretrained:
            log.warning("%s", warning)

    state = engine.run()
    weights = None
    if ctx.is_main:  # loadable with load_segmenter / mnv4 segment
        weights = save_weights(model, spec, out / "model.safetensors")
        if state.ema is not None and state.ema.n_averaged.item() > 0:
            save_weights(state.ema.module, spec, out / "model_ema.safetensors")
    return SegmentTrainResult(out, state.global_step, state.epoch, state.history, state.best_score, weights, spec)


def save_weights(model: nn.Module, spec: SegmenterSpec, path: Path) -> Path:
    """``save_segmenter`` through a temporary file: a reader sees the old file or the complete new one."""
    with staged_file(path) as tmp:
        save_segmenter(model, spec, tmp)
    return path


class SegmentationTask(Task):
    """Pixel-wise cross-entropy over the labelled pixels (plus ``aux_weight`` x the aux head's) on this process's
    micro-batches of crops; mIoU of the model and its EMA every ``eval_every`` epochs and after the last."""

    kind = "mnv4 segmentation training"
    score_key = "best_miou"

    def __init__(self, cfg: SegmentConfig, ctx: DistContext, plan: RunPlan, spec: SegmenterSpec,
                 train_set: SegmentationDataset, val_data: MaskFolder | CocoMasks | None):
        self.cfg, self.ctx, self.plan, self.spec = cfg, ctx, plan, spec
        self.train_set, self.val_data = train_set, val_data
        self.bad_log = BadFileLog("replaced undecodable training image")
        self.val_bad = BadFileLog("skipped undecodable validation image")

    def micro_batches(self, state):
        return micro_batch_loader(self.train_set, collate_segmentation, self.cfg, self.ctx, self.plan, state)

    def replaced(self) -> int:
        return self.bad_log.count

    def loss(self, model, batch, guard):
        images, masks, _, bad = batch
        self.bad_log(bad)
        device = self.ctx.device
        images = images.to(device, non_blocking=True)
        masks = masks.to(device, non_blocking=True)
        guard.observe("input", images)
        with autocast(device, self.cfg.precision):
            outputs = model(images)
        outputs = {name: logits.float() for name, logits in outputs.items()}
        return {"loss": segmentation_loss(outputs, masks, self.spec.ignore_index, self.cfg.aux_weight)}

    def validate(self, engine: Engine) -> tuple[dict, float | None]:
        """mIoU (and pixel accuracy) of the model and its EMA, every ``eval_every`` epochs and at the end of the
        run; the score is the better mIoU. Undecodable validation images are skipped and counted (``val_skipped``,
        over all processes)."""
        cfg, ctx, state = self.cfg, self.ctx, engine.state
        finished = state.global_step == self.plan.total_steps
        scheduled = cfg.eval_every and (state.epoch + 1) % cfg.eval_every == 0
        if self.val_data is None or not (finished or scheduled):
            return {}, None
        skipped_before = self.val_bad.count
        row: dict = {}
        score = self._miou(state.model, "val", row)
        skipped = torch.tensor([self.val_bad.count - skipped_before], device=ctx.device)
        if ctx.enabled:
            torch.distributed.all_reduce(skipped)
        row["val_skipped"] = int(skipped.item())
        if state.ema is not None and state.ema.n_averaged.item() > 0:
            score = max(score, self._miou(state.ema.module, "ema", row))
        state.model.train()
        return row, score

    def _miou(self, model: nn.Module, prefix: str, row: dict) -> float:
        """The metrics of ``model`` on the validation set, summed over the processes (every rank gets the same)."""
        ctx = self.ctx
        metrics = evaluate_segmenter(model, self.val_data, self.spec, ctx.device, self.plan.batch_size,
                                     self.cfg.workers, world_size=ctx.world_size, rank=ctx.rank, bad_log=self.val_bad)
        row.update({prefix + "_miou": metrics.miou, prefix + "_pixel_accuracy": metrics.pixel_accuracy,
                    prefix + "_mean_class_accuracy": metrics.mean_class_accuracy})
        return metrics.miou

    def checkpoint_extras(self) -> dict:
        return {"segmenter": self.spec.to_dict()}

    def check_resumable(self, ckpt: dict, path: Path) -> None:
        stored = ckpt.get("segmenter")
        if stored is None:
            kind = "classification" if "best_top1" in ckpt else "detection" if "detector" in ckpt else "another"
            raise UserError(f"{path} is a {kind} checkpoint, not a segmenter's: resume it with its own command")
        ours = self.spec.to_dict()
        differ = [k for k in RESUME_KEYS if stored.get(k) != ours[k]]
        if differ:
            shown = ", ".join(f"{k} {stored.get(k)!r} (now {ours[k]!r})" for k in differ)
            raise UserError(f"{path} belongs to another segmenter: {shown}; pass the same settings to resume it")
        segment_config_from_dict(ckpt["config"])  # a config this version can read
