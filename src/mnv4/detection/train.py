"""Training a detector on COCO-format data: torchrun DDP, AMP, exact resume from atomic checkpoints, EMA,
CSV/TensorBoard logs, a progress bar.

Detection is a task on the shared run machinery (``mnv4.engine``): the step loop, its determinism (the data order of
each epoch and every sample's augmentation come from ``(seed, epoch, index)`` through ``MicroBatchSampler`` and
``CocoDetectionDataset``; the draws of micro-batch ``c`` at step ``s`` -- stochastic depth -- from ``(seed, s, c)``),
checkpoints, exact resume, the NaN guard and the logs are the engine's.

Library use::

    from mnv4.detection import load_detect_config, train_detector
    result = train_detector(load_detect_config("retinanet_paper", train_annotations=..., train_images=...))
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..engine import Engine, Optimization, OptimizerSettings, RunPlan, Task, claim_run_folder
from ..engine.checkpoint import checkpoint_to_resume
from ..engine.device import autocast, make_ema, place_model, run_scope
from ..engine.distributed import DistContext, main_process_first
from ..engine.metrics import BadFileLog
from ..engine.seeds import micro_batch_loader
from ..errors import UserError
from .augment import train_transform
from .coco import CocoData, CocoDetectionDataset, collate_detection, load_coco
from .config import DetectConfig, detect_config_from_dict
from .evaluate import evaluate_detector
from .models import DetectorSpec, create_detector, save_detector

log = logging.getLogger("mnv4.detection")


@dataclass
class DetectTrainResult:
    out: Path
    global_step: int
    epochs_done: int
    history: list[dict] = field(default_factory=list)  # one row per epoch: losses, COCO AP ...
    best_ap: float | None = None
    weights: Path | None = None  # out/model.safetensors (and model_ema.safetensors with EMA)
    spec: DetectorSpec | None = None

    @property
    def final(self) -> dict:
        return self.history[-1] if self.history else {}


def train_detector(cfg: DetectConfig) -> DetectTrainResult:
    """Train the detector ``cfg`` describes on ``cfg.train_annotations`` / ``cfg.train_images``, evaluating COCO AP
    on the validation set (if given) after each epoch. Single process or one process per device under torchrun.
    Writes checkpoints, ``steps.csv`` / ``epochs.csv`` and ``model.safetensors`` to ``cfg.out`` (rank 0)."""
    cfg.check_training_data()
    with run_scope(cfg.device, cfg.threads, cfg.deterministic) as ctx:
        return _train_detector(cfg, ctx)


def _train_detector(cfg: DetectConfig, ctx: DistContext) -> DetectTrainResult:
    out = claim_run_folder(cfg.out, cfg.resume, is_main=ctx.is_main)  # before any work
    torch.manual_seed(cfg.seed)  # model init: identical on every rank
    train_coco = load_coco(cfg.train_annotations, cfg.train_images)
    val_coco = None
    if cfg.val_annotations:
        val_coco = load_coco(cfg.val_annotations, cfg.val_images)
        if [c["id"] for c in val_coco.categories] != [c["id"] for c in train_coco.categories]:
            raise UserError(f"{cfg.val_annotations} defines other categories than {cfg.train_annotations}; "
                            "train and validation files need the same category list")
    spec = DetectorSpec(cfg.arch, cfg.backbone, train_coco.num_classes, cfg.image_size, cfg.fpn_channels,
                        train_coco.categories)
    transform = train_transform(spec.size, cfg.augment, cfg.hflip, (cfg.scale_min, cfg.scale_max),
                                cfg.randaug_layers, cfg.randaug_magnitude, cfg.randaug_prob)
    train_set = CocoDetectionDataset(train_coco, transform, seed=cfg.seed)
    plan = RunPlan.build(cfg, len(train_set), ctx.world_size)

    options = {"frozen_bn": cfg.frozen_bn, "trainable_stages": cfg.trainable_stages,
               "drop_path_rate": cfg.drop_path, "detections_per_img": cfg.detections_per_img}
    if cfg.score_thresh is not None:
        options["score_thresh"] = cfg.score_thresh
    model = place_model(create_detector(spec, pretrained_backbone=cfg.pretrained, **options), ctx,
                        sync_bn=cfg.sync_bn)
    settings = OptimizerSettings(cfg.optimizer, cfg.lr, cfg.weight_decay, (cfg.beta1, cfg.beta2), cfg.adam_eps,
                                 cfg.momentum)
    optim = Optimization.build(model, settings, ctx.device, plan.warmup_steps, plan.schedule_steps,
                               cfg.min_lr_fraction, cfg.precision, grad_clip=cfg.grad_clip)
    task = DetectionTask(cfg, ctx, plan, spec, train_set, val_coco)
    engine = Engine(task, cfg, ctx, plan, model, optim, make_ema(model, cfg.ema_decay), tensorboard=cfg.tensorboard)

    with main_process_first(ctx):  # rank 0 sets unreadable checkpoints aside first
        found = checkpoint_to_resume(cfg.resume, out)
    if found is not None:
        engine.load(*reversed(found))
    elif cfg.resume and ctx.is_main:
        log.info("--resume auto: no checkpoint in %s yet, starting a new run", out)
    if ctx.is_main:
        log.info("training %s / %s on %d images (%d categories) at %d px: %s", cfg.arch, cfg.backbone,
                 len(train_set), spec.num_classes - 1, spec.size, plan.describe())

    state = engine.run()
    weights = None
    if ctx.is_main:  # loadable with load_detector / mnv4 detect
        weights = Path(save_detector(model, spec, out / "model.safetensors"))
        if state.ema is not None and state.ema.n_averaged.item() > 0:
            save_detector(state.ema.module, spec, out / "model_ema.safetensors")
    return DetectTrainResult(out, state.global_step, state.epoch, state.history, state.best_score, weights, spec)


class DetectionTask(Task):
    """The detector's own losses (torchvision's: focal + box regression for RetinaNet, hard-negative-mined CE +
    smooth L1 for SSDLite) on this process's micro-batches; COCO AP of the model and its EMA every ``eval_every``
    epochs and after the last."""

    kind = "mnv4 detection training"
    score_key = "best_ap"

    def __init__(self, cfg: DetectConfig, ctx: DistContext, plan: RunPlan, spec: DetectorSpec,
                 train_set: CocoDetectionDataset, val_coco: CocoData | None):
        self.cfg, self.ctx, self.plan, self.spec, self.train_set, self.val_coco = cfg, ctx, plan, spec, train_set, \
            val_coco
        self.bad_log = BadFileLog("replaced undecodable training image")
        self.val_bad = BadFileLog("skipped undecodable validation image")

    def micro_batches(self, state):
        return micro_batch_loader(self.train_set, collate_detection, self.cfg, self.ctx, self.plan, state)

    def replaced(self) -> int:
        return self.bad_log.count

    def loss(self, model, batch, guard):
        images, targets, _, bad = batch
        self.bad_log(bad)
        device = self.ctx.device
        images = [im.to(device, non_blocking=True) for im in images]
        for image in images:
            guard.observe("input", image)
        targets = [{"boxes": t["boxes"].to(device), "labels": t["labels"].to(device)} for t in targets]
        with autocast(device, self.cfg.precision):
            parts = model(images, targets)
        return {"loss": sum(v.float() for v in parts.values()), **parts}

    def validate(self, engine: Engine) -> tuple[dict, float | None]:
        """COCO AP of the model and its EMA, every ``eval_every`` epochs and at the end of the run."""
        cfg, state = self.cfg, engine.state
        finished = state.global_step == self.plan.total_steps
        scheduled = cfg.eval_every and (state.epoch + 1) % cfg.eval_every == 0
        if self.val_coco is None or not (finished or scheduled):
            return {}, None
        skipped_before = self.val_bad.count
        row: dict = {}
        score = self._coco_ap(state.model, "val", row)
        row["val_skipped"] = self.val_bad.count - skipped_before
        if state.ema is not None and state.ema.n_averaged.item() > 0:
            score = max(score, self._coco_ap(state.ema.module, "ema", row))
        state.model.train()
        return row, score

    def _coco_ap(self, model: nn.Module, prefix: str, row: dict) -> float:
        ctx = self.ctx
        metrics = evaluate_detector(model, self.val_coco, ctx.device, self.plan.batch_size, self.cfg.workers,
                                    ctx.world_size, ctx.rank, bad_log=self.val_bad)
        stats = torch.zeros(3, dtype=torch.float64, device=ctx.device)
        if metrics is not None:
            stats = torch.tensor([metrics["AP"], metrics["AP50"], metrics["AP75"]], dtype=torch.float64,
                                 device=ctx.device)
        if ctx.enabled:
            torch.distributed.broadcast(stats, src=0)
        ap, ap50, ap75 = stats.tolist()
        row.update({prefix + "_AP": ap, prefix + "_AP50": ap50, prefix + "_AP75": ap75})
        return ap

    def checkpoint_extras(self) -> dict:
        return {"detector": self.spec.to_dict()}

    def check_resumable(self, ckpt: dict, path: Path) -> None:
        stored = detect_config_from_dict(ckpt["config"])
        if (stored.arch, stored.backbone) != (self.cfg.arch, self.cfg.backbone):
            raise UserError(f"{path} is a {stored.arch} / {stored.backbone} checkpoint, not "
                            f"{self.cfg.arch} / {self.cfg.backbone}")
