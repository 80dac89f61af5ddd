"""Training a detector on COCO-format data, with the classification trainer's machinery: torchrun DDP, AMP, exact
resume from atomic checkpoints, EMA, CSV/TensorBoard logs, a progress bar.

Determinism is the classification trainer's (``mnv4.train.loop``): the data order of each epoch and every
sample's augmentation come from ``(seed, epoch, index)`` (``MicroBatchSampler``, ``CocoDetectionDataset``), and the
random draws of micro-batch ``c`` at step ``s`` (stochastic depth) from ``(seed, s, c)``. A resumed run therefore
continues exactly where the interrupted one was.

Library use::

    from mnv4.detection import load_detect_config, train_detector
    result = train_detector(load_detect_config("retinanet_paper", train_annotations=..., train_images=...))
"""

from __future__ import annotations

import logging
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from ..errors import UserError
from ..train.checkpoint import (
    atomic_save,
    checkpoint_name,
    checkpoint_to_resume,
    list_checkpoints,
    prune_checkpoints,
    rng_state,
    set_rng_state,
)
from ..train.data import STEP_STREAM, BadFileLog, MicroBatchSampler, mix_seed
from ..train.distributed import (
    DistContext,
    all_reduce_sum,
    cleanup_distributed,
    convert_sync_batchnorm,
    init_distributed,
)
from ..train.guard import NonFiniteLossError
from ..train.metrics import MetricLog
from ..train.optim import WarmupCosine
from ..train.validation import autocast
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
    ctx = init_distributed(cfg.device)
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    try:
        return DetectionTrainer(cfg, ctx).run()
    finally:
        cleanup_distributed()
        torch.set_num_threads(threads)  # the run's settings are not left behind for the caller's process
        torch.use_deterministic_algorithms(deterministic)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on conv/linear weights only: not on BatchNorm, biases or layer-scale gammas (1-D tensors)."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: nn.Module, cfg: DetectConfig, fused: bool) -> torch.optim.Optimizer:
    """Adam with L2 (the paper's "Adam, L2 weight decay"), AdamW (decoupled), or SGD with momentum and L2."""
    groups = param_groups(model, cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    kind = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return kind(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.adam_eps, fused=fused)


class DetectionTrainer:
    """One run: ``run()`` sets up, resumes, loops over epochs (steps, logs, checkpoints, validation), exports."""

    def __init__(self, cfg: DetectConfig, ctx: DistContext):
        self.cfg, self.ctx, self.device, self.out = cfg, ctx, ctx.device, Path(cfg.out)
        if not cfg.train_annotations or not cfg.train_images:
            raise UserError("training needs train_annotations (COCO instances JSON) and train_images (its folder)")
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True)
        torch.manual_seed(cfg.seed)  # model init: identical on every rank

        self.train_coco = load_coco(cfg.train_annotations, cfg.train_images)
        self.val_coco: CocoData | None = None
        if cfg.val_annotations:
            self.val_coco = load_coco(cfg.val_annotations, cfg.val_images or cfg.train_images)
            if [c["id"] for c in self.val_coco.categories] != [c["id"] for c in self.train_coco.categories]:
                raise UserError(f"{cfg.val_annotations} defines other categories than {cfg.train_annotations}; "
                                "train and validation files need the same category list")
        self.spec = DetectorSpec(cfg.arch, cfg.backbone, self.train_coco.num_classes, cfg.image_size,
                                 cfg.fpn_channels, self.train_coco.categories)
        size = self.spec.size
        transform = train_transform(size, cfg.augment, cfg.hflip, (cfg.scale_min, cfg.scale_max),
                                    cfg.randaug_layers, cfg.randaug_magnitude, cfg.randaug_prob)
        self.train_ds = CocoDetectionDataset(self.train_coco, transform, seed=cfg.seed)
        self.bad_log = BadFileLog()

        self.batch_size = cfg.batch_size or max(cfg.global_batch // ctx.world_size, 1)
        self.accum = cfg.global_batch // (self.batch_size * ctx.world_size)
        if self.accum < 1 or self.accum * self.batch_size * ctx.world_size != cfg.global_batch:
            raise UserError(f"global batch {cfg.global_batch} must be batch_size {self.batch_size} x "
                            f"{ctx.world_size} processes x an integer number of accumulation steps")
        self.steps_per_epoch = len(self.train_ds) // cfg.global_batch
        if self.steps_per_epoch == 0:
            raise UserError(f"global batch {cfg.global_batch} exceeds the {len(self.train_ds)} training images")
        self.schedule_steps = max(1, math.ceil(cfg.epochs * self.steps_per_epoch))
        self.total_steps = min(self.schedule_steps, cfg.max_steps) if cfg.max_steps else self.schedule_steps

        self.model = self._build_model()
        self.ema = None
        if cfg.ema_decay:
            self.ema = AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)
        self.optimizer = make_optimizer(self.model, cfg, fused=self.device.type == "cuda")
        warmup = round(cfg.warmup_epochs * self.steps_per_epoch)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, WarmupCosine(warmup, self.schedule_steps, cfg.min_lr_fraction)
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.precision == "fp16")
        self.epoch = self.step_in_epoch = self.global_step = 0
        self.best_ap: float | None = None
        self.history: list[dict] = []

    # ------------------------------------------------------------------------------------------- setup
    def _build_model(self) -> nn.Module:
        cfg = self.cfg
        options = {"frozen_bn": cfg.frozen_bn, "trainable_stages": cfg.trainable_stages,
                   "drop_path_rate": cfg.drop_path, "detections_per_img": cfg.detections_per_img}
        if cfg.score_thresh is not None:
            options["score_thresh"] = cfg.score_thresh
        model = create_detector(self.spec, pretrained_backbone=cfg.pretrained, **options).to(self.device)
        if cfg.sync_bn and self.ctx.enabled:
            if self.device.type != "cuda":
                raise UserError("sync_bn needs CUDA (PyTorch's SyncBatchNorm does not synchronise CPU tensors)")
            model = convert_sync_batchnorm(model)
        return model

    def _resume(self) -> bool:
        """Restore the checkpoint ``--resume`` names; False when ``auto`` finds none yet (a new run, as in
        ``mnv4 train``: one command starts and restarts a job)."""
        found = checkpoint_to_resume(self.cfg.resume, self.out)
        if found is None:
            if self.ctx.is_main:
                log.info("--resume auto: no checkpoint in %s yet, starting a new run", self.out)
            return False
        path, ckpt = found
        order = ckpt["data_order"]
        now = (self.cfg.seed, self.cfg.global_batch, len(self.train_ds))
        if (order["seed"], order["global_batch"], order["num_samples"]) != now:
            raise UserError(f"{path} was written with seed/global batch/images {order['seed']}, "
                            f"{order['global_batch']}, {order['num_samples']}; this run has {now[0]}, {now[1]}, "
                            f"{now[2]}; an exact resume needs the same")
        stored = detect_config_from_dict(ckpt["config"])
        if (stored.arch, stored.backbone) != (self.cfg.arch, self.cfg.backbone):
            raise UserError(f"{path} is a {stored.arch} / {stored.backbone} checkpoint, not "
                            f"{self.cfg.arch} / {self.cfg.backbone}")
        self.model.load_state_dict(ckpt["model"])
        if self.ema is not None and ckpt.get("ema") is not None:
            self.ema.load_state_dict(ckpt["ema"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng"])
        self.epoch, self.step_in_epoch, self.global_step = ckpt["epoch"], ckpt["step_in_epoch"], ckpt["global_step"]
        self.best_ap, self.history = ckpt.get("best_ap"), list(ckpt.get("history", []))
        if self.ctx.is_main:
            log.info("resumed from %s at epoch %d, step %d (global step %d)", path, self.epoch, self.step_in_epoch,
                     self.global_step)
        return True

    # ------------------------------------------------------------------------------------------- the loop
    def run(self) -> DetectTrainResult:
        cfg, ctx = self.cfg, self.ctx
        resumed = bool(cfg.resume) and self._resume()
        self.train_model: nn.Module = self.model
        if ctx.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        # resumed: rows the killed run wrote after its checkpoint are dropped (the steps are run again)
        self.metrics = MetricLog(self.out, ctx.is_main, cfg.tensorboard, self.global_step if resumed else None)
        if ctx.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            log.info("training %s / %s on %d images (%d categories) at %d px: %d steps of %d (= %d/process x %d "
                     "processes x %d accum)", cfg.arch, cfg.backbone, len(self.train_ds), self.spec.num_classes - 1,
                     self.spec.size, self.total_steps, cfg.global_batch, self.batch_size, ctx.world_size, self.accum)
        try:
            while self.global_step < self.total_steps:
                self._train_epoch()
                row = self._end_of_epoch()
                if self.step_in_epoch == self.steps_per_epoch:
                    self.epoch, self.step_in_epoch = self.epoch + 1, 0
                self._save(row.get("kind", "step"))
        finally:
            self.metrics.close()
        weights = self._export() if ctx.is_main else None
        return DetectTrainResult(self.out, self.global_step, self.epoch, self.history, self.best_ap, weights,
                                 self.spec)

    def _loader(self):
        sampler = MicroBatchSampler(len(self.train_ds), self.cfg.global_batch, self.ctx.world_size, self.ctx.rank,
                                    self.accum, self.cfg.seed, self.epoch, self.step_in_epoch)
        return torch.utils.data.DataLoader(self.train_ds, batch_sampler=sampler, num_workers=self.cfg.workers,
                                           collate_fn=collate_detection, pin_memory=self.device.type == "cuda")

    def _train_epoch(self) -> None:
        cfg = self.cfg
        batches = iter(self._loader())
        steps = min(self.steps_per_epoch - self.step_in_epoch, self.total_steps - self.global_step)
        progress = None
        if self.ctx.is_main and cfg.progress:
            from tqdm.auto import tqdm

            progress = tqdm(total=steps, desc=f"epoch {self.epoch}", leave=False, dynamic_ncols=True)
        self.model.train()
        self.epoch_losses: dict[str, float] = {}
        window: dict[str, float] = {}
        window_start, window_steps = time.perf_counter(), 0
        try:
            for _ in range(steps):
                losses = self._train_step(batches)
                for key, value in losses.items():
                    window[key] = window.get(key, 0.0) + value
                    self.epoch_losses[key] = self.epoch_losses.get(key, 0.0) + value
                window_steps += 1
                last = self.step_in_epoch == self.steps_per_epoch or self.global_step == self.total_steps
                periodic = cfg.save_every_steps and self.global_step % cfg.save_every_steps == 0
                if window_steps == cfg.log_every or periodic or last:
                    elapsed = time.perf_counter() - window_start
                    row = {"step": self.global_step, "epoch": self.epoch,
                           **{k: v / window_steps for k, v in window.items()},
                           "lr": self.scheduler.get_last_lr()[0],
                           "img_per_s": window_steps * cfg.global_batch / max(elapsed, 1e-9)}
                    self.metrics.write("steps", row, self.global_step)
                    if progress is not None:
                        progress.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.2e}")
                    window, window_start, window_steps = {}, time.perf_counter(), 0
                if progress is not None:
                    progress.update(1)
                if periodic and not last:
                    self._save("step")
            self.epoch_steps = steps
        finally:
            if progress is not None:
                progress.close()

    def _train_step(self, batches) -> dict[str, float]:
        """One optimiser step over ``accum`` micro-batches; returns the losses (summed and per term)."""
        cfg, ctx = self.cfg, self.ctx
        totals: dict[str, torch.Tensor] = {}
        for a in range(self.accum):
            images, targets, _, bad = next(batches)
            self.bad_log(bad)
            torch.manual_seed(mix_seed(cfg.seed, STEP_STREAM, self.global_step, ctx.rank * self.accum + a))
            images = [im.to(self.device, non_blocking=True) for im in images]
            targets = [{"boxes": t["boxes"].to(self.device), "labels": t["labels"].to(self.device)} for t in targets]
            with autocast(self.device, cfg.precision):
                parts = self.train_model(images, targets)
            loss = sum(v.float() for v in parts.values())
            sync = a == self.accum - 1 or not ctx.enabled
            with nullcontext() if sync else self.train_model.no_sync():
                self.scaler.scale(loss / self.accum).backward()
            for key, value in {"loss": loss, **parts}.items():
                totals[key] = totals.get(key, 0.0) + value.detach().float() / self.accum
        if cfg.grad_clip:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.global_step += 1
        self.step_in_epoch += 1
        if self.ema is not None and self.global_step > round(cfg.ema_start_epochs * self.steps_per_epoch):
            self.ema.update_parameters(self.model)
        values = torch.stack(list(totals.values()))
        values = all_reduce_sum(values) / ctx.world_size
        if not torch.isfinite(values).all():
            last = list_checkpoints(self.out)
            where = f"last good checkpoint: {last[-1]}" if last else "no checkpoint was written yet"
            raise NonFiniteLossError(f"the loss became NaN/inf at global step {self.global_step} (epoch "
                                     f"{self.epoch}); stopping. {where} (resume with --resume auto). Try a lower "
                                     "--lr, a longer warm-up, or bf16 instead of fp16.")
        return dict(zip(totals, values.tolist(), strict=True))

    def _end_of_epoch(self) -> dict:
        """Validate (COCO AP of the model and of the EMA), log the epoch row, pick best."""
        cfg = self.cfg
        row: dict = {"epoch": self.epoch, "step": self.global_step}
        row.update({f"train_{k}": v / max(self.epoch_steps, 1) for k, v in self.epoch_losses.items()})
        row["lr"] = self.scheduler.get_last_lr()[0]
        kind = "step"
        finished = self.global_step == self.total_steps
        scheduled = cfg.eval_every and (self.epoch + 1) % cfg.eval_every == 0
        if self.val_coco is not None and (finished or scheduled):
            score = self._validate(self.model, "val", row)
            if self.ema is not None and self.ema.n_averaged.item() > 0:
                score = max(score, self._validate(self.ema.module, "ema", row))
            if self.best_ap is None or score > self.best_ap:
                self.best_ap, kind = score, "best"
            row["best_ap"] = self.best_ap
        self.history.append(row)
        self.metrics.write("epochs", row, self.global_step)
        if self.ctx.is_main:
            log.info("epoch %d: %s", self.epoch, ", ".join(f"{k} {v:.4g}" for k, v in row.items() if k != "epoch"))
        return {**row, "kind": kind}

    def _validate(self, model: nn.Module, prefix: str, row: dict) -> float:
        metrics = evaluate_detector(model, self.val_coco, self.device, self.batch_size, self.cfg.workers,
                                    self.ctx.world_size, self.ctx.rank)
        stats = torch.zeros(3, dtype=torch.float64, device=self.device)
        if metrics is not None:
            stats = torch.tensor([metrics["AP"], metrics["AP50"], metrics["AP75"]], dtype=torch.float64,
                                 device=self.device)
        if self.ctx.enabled:
            torch.distributed.broadcast(stats, src=0)
        row.update({f"{prefix}_AP": stats[0].item(), f"{prefix}_AP50": stats[1].item(),
                    f"{prefix}_AP75": stats[2].item()})
        self.model.train()
        return stats[0].item()

    # ------------------------------------------------------------------------------------------- outputs
    def _save(self, kind: str) -> None:
        """Rank 0 writes ``ckpt-<step>.pt`` (and ``best.pt``); the others wait for it."""
        if self.ctx.is_main:
            state = {
                "model": self.model.state_dict(),
                "ema": self.ema.state_dict() if self.ema is not None else None,
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "epoch": self.epoch,
                "step_in_epoch": self.step_in_epoch,
                "global_step": self.global_step,
                "data_order": {"seed": self.cfg.seed, "global_batch": self.cfg.global_batch,
                               "num_samples": len(self.train_ds)},
                "rng": rng_state(),
                "best_ap": self.best_ap,
                "history": self.history,
                "config": self.cfg.to_dict(),
                "detector": self.spec.to_dict(),
            }
            atomic_save(state, self.out / checkpoint_name(self.global_step))
            prune_checkpoints(self.out, self.cfg.keep_last)
            if kind == "best":
                atomic_save(state, self.out / "best.pt")
        if self.ctx.enabled:
            torch.distributed.barrier()

    def _export(self) -> Path:
        """``model.safetensors`` (+ ``model_ema.safetensors``), loadable with ``load_detector`` / ``mnv4 detect``."""
        path = Path(save_detector(self.model, self.spec, self.out / "model.safetensors"))
        if self.ema is not None and self.ema.n_averaged.item() > 0:
            save_detector(self.ema.module, self.spec, self.out / "model_ema.safetensors")
        return path
