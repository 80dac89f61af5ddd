"""The training loop, top to bottom: set up -> (resume) -> for each step: micro-batches, loss, backward, step, EMA,
logs, checkpoints -> validate each epoch -> final weights.

Determinism: every random draw of micro-batch ``c`` at optimiser step ``s`` (dropout, stochastic depth, Mixup/CutMix)
comes from torch's generator re-seeded with ``(seed, s, c)``, and every sample's augmentation from its own seed (see
``mnv4.data``). So a run's result depends on the seed, the global batch and the chunk size only: resuming from a
checkpoint, or splitting the same chunks over more processes instead of accumulation steps, gives the same numbers.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from ..data import (
    BadFileLog,
    BatchMix,
    EncodedImageDataset,
    GpuAugment,
    ImageFolderDataset,
    MicroBatchSampler,
    ShardSampler,
    collate,
    mix_seed,
    train_transform,
    val_transform,
)
from ..specs import MODEL_SPECS, spec_to_dict
from .checkpoint import (
    atomic_save,
    checkpoint_name,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    resolve_resume,
    rng_state,
    set_rng_state,
)
from .config import TrainConfig, config_from_dict
from .distill import SoftLabels, kd_loss, load_teacher
from .distributed import DistContext, all_reduce_sum, cleanup_distributed, convert_sync_batchnorm, init_distributed

log = logging.getLogger("mnv4.train")
STEP_STREAM = 3


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or inf; the run stopped and the last checkpoint on disk is from before it happened."""


@dataclass
class TrainResult:
    out: Path
    global_step: int
    epochs_done: int
    history: list[dict] = field(default_factory=list)  # one row per epoch: losses and accuracies
    best_top1: float | None = None
    weights: Path | None = None  # out/model.safetensors (and model_ema.safetensors with EMA)

    @property
    def final(self) -> dict:
        return self.history[-1] if self.history else {}


# ----------------------------------------------------------------------------------------------- model pieces
def build_model(cfg: TrainConfig, num_classes: int) -> nn.Module:
    """The model for ``cfg``: new classifier for ``num_classes``; pretrained backbone when ``cfg.pretrained``."""
    from ..factory import create_model

    kwargs = dict(num_classes=num_classes, drop_rate=cfg.dropout, drop_path_rate=cfg.drop_path, attn_impl=cfg.attn_impl)
    # pretrained: True = the tag's weights, or a file; a classifier of another size is replaced by a new one
    return create_model(cfg.model, pretrained=cfg.pretrained or False, **kwargs)


def apply_recipe_to_model(model: nn.Module, cfg: TrainConfig) -> None:
    """BN eps/momentum from the recipe (PyTorch momentum convention) and the 'flat' stochastic-depth schedule."""
    from torchvision.ops import StochasticDepth

    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            if cfg.bn_eps is not None:
                m.eps = cfg.bn_eps
            if cfg.bn_momentum is not None:
                m.momentum = cfg.bn_momentum
    if cfg.drop_path_schedule == "flat" and cfg.drop_path > 0:
        # TF's flat_stochastic_depth_drop_rate: the same rate on every residual branch (spec §2.6)
        for m in model.modules():
            if hasattr(m, "drop_path") and getattr(m, "has_skip", False):
                m.drop_path = StochasticDepth(cfg.drop_path, mode="row")


def param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict]:
    """AdamW groups: no weight decay on 1-D tensors (BN weights/biases, conv/linear biases, layer-scale gammas);
    the classifier at ``lr``, the rest at ``lr * backbone_lr_scale``."""
    groups: dict[tuple[bool, bool], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decay = p.ndim > 1 and not name.endswith((".bias", ".gamma"))
        head = name.startswith("classifier.")
        groups.setdefault((decay, head), []).append(p)
    return [
        {
            "params": params,
            "weight_decay": cfg.weight_decay if decay else 0.0,
            "lr": cfg.lr * (1.0 if head else cfg.backbone_lr_scale),
            "l2": decay,
        }
        for (decay, head), params in sorted(groups.items())
    ]


class WarmupCosine:
    """LR factor: linear warm-up 0 -> 1 over ``warmup`` steps, then cosine 1 -> ``alpha`` at ``total`` steps."""

    def __init__(self, warmup: int, total: int, alpha: float):
        self.warmup, self.total, self.alpha = warmup, total, alpha

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        progress = min((step - self.warmup) / max(self.total - self.warmup, 1), 1.0)
        return self.alpha + (1 - self.alpha) * 0.5 * (1 + math.cos(math.pi * progress))


# ----------------------------------------------------------------------------------------------- logging
class MetricLog:
    """CSV files (steps.csv every ``log_every`` steps, epochs.csv per epoch) and TensorBoard scalars (rank 0)."""

    def __init__(self, out: Path, enabled: bool, tensorboard: bool):
        self.out, self.enabled, self.writer = out, enabled, None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(out / "tensorboard"))
            except ImportError:
                log.warning("tensorboard is not installed: logging to CSV only (pip install 'mnv4[train]')")

    def write(self, name: str, row: dict, step: int) -> None:
        if not self.enabled:
            return
        path = self.out / f"{name}.csv"
        header: list[str] = []
        if path.exists():
            with open(path, newline="") as f:
                header = next(csv.reader(f), [])
        if header and set(row) <= set(header):  # the usual case: append
            with open(path, "a", newline="") as f:
                csv.DictWriter(f, fieldnames=header).writerow(row)
        else:  # first row, or new columns (e.g. the EMA's, once it starts): rewrite with the union of columns
            rows = []
            if header:
                with open(path, newline="") as f:
                    rows = list(csv.DictReader(f))
            fields = header + [k for k in row if k not in header]
            with open(path, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=fields)
                writer.writeheader()
                writer.writerows([*rows, row])
        if self.writer is not None:
            for key, value in row.items():
                if isinstance(value, (int, float)) and key not in ("step", "epoch") and value == value:
                    self.writer.add_scalar(f"{name}/{key}", value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


# ----------------------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device, cfg: TrainConfig, gpu_aug=None) -> dict:
    """Top-1 / top-5 accuracy (%) and mean cross-entropy over the loader; summed over ranks under DDP."""
    model.eval()
    totals = torch.zeros(4, dtype=torch.float64, device=device)  # correct1, correct5, loss_sum, count
    for images, labels, _, _, _ in loader:
        if gpu_aug is not None:
            images, labels = gpu_aug(images, labels)
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        if cfg.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast(device, cfg.precision):
            logits = model(images).float()
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        hit = top == labels[:, None]
        totals += torch.stack(
            [
                hit[:, 0].sum().double(),
                hit.any(1).sum().double(),
                F.cross_entropy(logits, labels, reduction="sum").double(),
                torch.tensor(float(len(labels)), device=device, dtype=torch.float64),
            ]
        )
    totals = all_reduce_sum(totals)
    n = max(totals[3].item(), 1.0)
    return {"top1": 100 * totals[0].item() / n, "top5": 100 * totals[1].item() / n, "loss": totals[2].item() / n}


def autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


# ----------------------------------------------------------------------------------------------- training
def train(cfg: TrainConfig, model: nn.Module | None = None) -> TrainResult:
    """Train ``cfg.model`` (or the given ``model``) on ``cfg.data`` (``train/`` and ``val/`` ImageFolders).

    Single process, or one process per device under ``torchrun``. Returns the history; writes checkpoints, logs
    and ``model.safetensors`` to ``cfg.out`` (rank 0).
    """
    ctx = init_distributed(cfg.device)
    try:
        return _train(cfg, ctx, model)
    finally:
        cleanup_distributed()


def _train(cfg: TrainConfig, ctx: DistContext, model: nn.Module | None) -> TrainResult:
    device, out = ctx.device, Path(cfg.out)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if cfg.data_pipeline == "gpu" and device.type != "cuda":
        log.warning("data_pipeline='gpu' without CUDA: decoding and augmenting on the CPU in the main process")
    torch.manual_seed(cfg.seed)  # model init: identical on every rank

    # ---- data
    root = Path(cfg.data)
    if not (root / "train").is_dir():
        raise FileNotFoundError(f"{str(root / 'train')!r} does not exist: --data must hold train/<class>/*.jpg")
    gpu_pipeline = cfg.data_pipeline == "gpu"
    probe = ImageFolderDataset(root / "train", None)
    num_classes = len(probe.classes)
    if model is None:
        model = build_model(cfg, num_classes)
    size = cfg.image_size or getattr(getattr(model, "spec", None), "resolution", 224)
    if gpu_pipeline:
        train_ds: ImageFolderDataset = EncodedImageDataset(root / "train", seed=cfg.seed)
    else:
        train_ds = ImageFolderDataset(root / "train", train_transform(size, cfg), seed=cfg.seed)
    val_ds = None
    if (root / "val").is_dir():
        val_ds = (
            EncodedImageDataset(root / "val")
            if gpu_pipeline
            else ImageFolderDataset(root / "val", val_transform(size, cfg))
        )
        if val_ds.classes != train_ds.classes:
            raise ValueError(
                f"val/ classes {val_ds.classes[:5]}... differ from train/ classes {train_ds.classes[:5]}..."
            )
    elif ctx.is_main:
        log.warning("%s has no val/ folder: no validation", root)
    bad_log = BadFileLog()

    batch_size = cfg.batch_size or cfg.global_batch // ctx.world_size
    accum = cfg.global_batch // (batch_size * ctx.world_size)
    if accum < 1 or accum * batch_size * ctx.world_size != cfg.global_batch:
        raise ValueError(
            f"global batch {cfg.global_batch} must be batch_size {batch_size} x {ctx.world_size} processes x an "
            "integer number of accumulation steps; change --batch-size or --global-batch"
        )
    steps_per_epoch = len(train_ds) // cfg.global_batch
    if steps_per_epoch == 0:
        raise ValueError(f"global batch {cfg.global_batch} exceeds the {len(train_ds)} training images; lower it")
    schedule_steps = max(1, math.ceil(cfg.epochs * steps_per_epoch))  # the LR schedule always spans the epochs
    total_steps = min(schedule_steps, cfg.max_steps) if cfg.max_steps else schedule_steps
    warmup_steps = round(cfg.warmup_epochs * steps_per_epoch)
    ema_start_step = round(cfg.ema_start_epochs * steps_per_epoch)

    # ---- teacher / soft labels
    teacher = soft_labels = None
    if cfg.teacher:
        teacher = load_teacher(cfg.teacher, num_classes, cfg.teacher_model).to(device)
        if cfg.channels_last:
            teacher = teacher.to(memory_format=torch.channels_last)
    if cfg.soft_labels:
        if cfg.mixup_prob > 0:
            raise ValueError("offline distillation (soft_labels) needs mixup_prob = 0: the stored labels are per crop")
        if gpu_pipeline:
            raise ValueError("offline distillation re-creates crops with the CPU pipeline; use data_pipeline='cpu'")
        soft_labels = SoftLabels(cfg.soft_labels, cfg, size, train_ds.classes)

    # ---- model, EMA, optimiser, schedule
    apply_recipe_to_model(model, cfg)
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    if cfg.sync_bn and ctx.enabled:
        if device.type != "cuda":
            raise ValueError("sync_bn needs CUDA (PyTorch's SyncBatchNorm does not synchronise CPU tensors)")
        model = convert_sync_batchnorm(model)
    ema = None
    if cfg.ema_decay:
        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)
    groups = param_groups(model, cfg)
    l2_params = [p for g in groups if g.pop("l2") for p in g["params"]]
    fused = device.type == "cuda"
    optimizer = torch.optim.AdamW(
        groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.adam_eps, weight_decay=cfg.weight_decay, fused=fused
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, WarmupCosine(warmup_steps, schedule_steps, cfg.min_lr_fraction)
    )
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")

    # ---- resume
    epoch, step_in_epoch, global_step, best_top1, history = 0, 0, 0, None, []
    if cfg.resume:
        path = resolve_resume(cfg.resume, out)
        ckpt = load_checkpoint(path)
        _check_resumable(ckpt, cfg, len(train_ds), path)
        model.load_state_dict(ckpt["model"])
        if ema is not None and ckpt.get("ema") is not None:
            ema.load_state_dict(ckpt["ema"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng"])
        epoch, step_in_epoch, global_step = ckpt["epoch"], ckpt["step_in_epoch"], ckpt["global_step"]
        best_top1, history = ckpt.get("best_top1"), list(ckpt.get("history", []))
        if ctx.is_main:
            log.info("resumed from %s at epoch %d, step %d (global step %d)", path, epoch, step_in_epoch, global_step)

    train_model: nn.Module = model
    if ctx.enabled:
        ids = [device.index] if device.type == "cuda" else None
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if cfg.compile:
        train_model = torch.compile(train_model)

    mixer = None
    if cfg.mixup_prob > 0:
        mixer = BatchMix(num_classes, cfg.mixup_prob, cfg.mixup_alpha, cfg.cutmix_alpha, cfg.mixup_switch_prob)
    gpu_train = GpuAugment(size, cfg, device, train=True, bad_log=bad_log) if gpu_pipeline else None
    gpu_val = GpuAugment(size, cfg, device, train=False, bad_log=bad_log) if gpu_pipeline else None
    metrics = MetricLog(out, ctx.is_main, cfg.tensorboard)
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        log.info(
            "training %s on %d images (%d classes) at %d px: %d steps of %d (= %d/process x %d processes x %d accum)",
            cfg.model,
            len(train_ds),
            num_classes,
            size,
            total_steps,
            cfg.global_batch,
            batch_size,
            ctx.world_size,
            accum,
        )

    def loader_for(dataset, batch_sampler):
        return torch.utils.data.DataLoader(
            dataset,
            batch_sampler=batch_sampler,
            num_workers=cfg.workers,
            collate_fn=collate,
            pin_memory=device.type == "cuda" and not gpu_pipeline,
            persistent_workers=False,
        )

    def save(kind: str) -> Path | None:
        """Rank 0 writes ``ckpt-<step>.pt`` (and ``best.pt``); the others just wait for it."""
        path = None
        if ctx.is_main:
            state = {
                "model": model.state_dict(),
                "ema": ema.state_dict() if ema is not None else None,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "epoch": epoch,
                "step_in_epoch": step_in_epoch,
                "global_step": global_step,
                "data_order": {"seed": cfg.seed, "global_batch": cfg.global_batch, "num_samples": len(train_ds)},
                "rng": rng_state(),
                "best_top1": best_top1,
                "history": history,
                "config": cfg.to_dict(),
            }
            path = atomic_save(state, out / checkpoint_name(global_step))
            prune_checkpoints(out, cfg.keep_last)
            if kind == "best":
                atomic_save(state, out / "best.pt")
        if ctx.enabled:
            torch.distributed.barrier()
        return path

    def check_finite(flag: torch.Tensor) -> None:
        if all_reduce_sum(flag.clone().float()).item() > 0:
            last = list_checkpoints(out)
            where = f"last good checkpoint: {last[-1]}" if last else "no checkpoint was written yet"
            raise NonFiniteLossError(
                f"the loss became NaN/inf by global step {global_step} (epoch {epoch}); stopping. {where} "
                "(resume with --resume auto). Try a lower --lr, a longer warm-up, or bf16 instead of fp16."
            )

    # ---- the loop
    nonfinite = torch.zeros((), dtype=torch.bool, device=device)
    progress = None
    try:
        while global_step < total_steps:
            aug_epoch = epoch % soft_labels.replicas if soft_labels is not None else epoch
            sampler = MicroBatchSampler(
                len(train_ds),
                cfg.global_batch,
                ctx.world_size,
                ctx.rank,
                accum,
                cfg.seed,
                epoch,
                step_in_epoch,
                aug_epoch,
            )
            batches = iter(loader_for(train_ds, sampler))
            steps_this_epoch = min(steps_per_epoch - step_in_epoch, total_steps - global_step)
            if ctx.is_main and cfg.progress:
                from tqdm.auto import tqdm

                progress = tqdm(total=steps_this_epoch, desc=f"epoch {epoch}", leave=False, dynamic_ncols=True)
            model.train()
            loss_sum = torch.zeros((), dtype=torch.float64, device=device)
            window_loss = torch.zeros((), dtype=torch.float64, device=device)
            window_start, window_steps, epoch_steps = time.perf_counter(), 0, 0
            for _ in range(steps_this_epoch):
                for a in range(accum):
                    images, labels, indices, aug_epochs, bad = next(batches)
                    bad_log(bad)
                    # dropout / stochastic depth / mixup of this chunk: a function of (seed, step, chunk) only
                    torch.manual_seed(mix_seed(cfg.seed, STEP_STREAM, global_step, ctx.rank * accum + a))
                    if gpu_train is not None:
                        images, labels = gpu_train(images, labels)
                    images = images.to(device, non_blocking=True)
                    labels = labels.to(device, non_blocking=True)
                    if cfg.channels_last:
                        images = images.contiguous(memory_format=torch.channels_last)
                    teacher_logits = None
                    if soft_labels is not None:
                        targets = F.one_hot(labels, num_classes).float()
                        teacher_logits = soft_labels.lookup(aug_epochs, indices).to(device)
                    elif mixer is not None:
                        images, targets = mixer(images, labels)
                    else:
                        targets = labels
                    with autocast(device, cfg.precision):
                        logits = train_model(images)
                        if teacher is not None:
                            with torch.no_grad():
                                teacher_logits = teacher(images)
                    loss = F.cross_entropy(logits.float(), targets, label_smoothing=cfg.label_smoothing)
                    if teacher_logits is not None:
                        kd = kd_loss(logits, teacher_logits, cfg.kd_temperature)
                        loss = cfg.kd_alpha * kd + (1 - cfg.kd_alpha) * loss
                    sync = a == accum - 1 or not ctx.enabled
                    with nullcontext() if sync else train_model.no_sync():
                        scaler.scale(loss / accum).backward()
                    loss = loss.detach()
                    nonfinite |= ~torch.isfinite(loss)
                    loss_sum += loss / accum
                    window_loss += loss / accum
                if cfg.grad_clip or cfg.l2:
                    scaler.unscale_(optimizer)
                if cfg.l2:  # coupled L2 (TF l2_weight_decay): grad += l2 * w on the decayed weights
                    with_grad = [p for p in l2_params if p.grad is not None]
                    torch._foreach_add_([p.grad for p in with_grad], with_grad, alpha=cfg.l2)
                if cfg.grad_clip:
                    nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                global_step += 1
                step_in_epoch += 1
                epoch_steps += 1
                window_steps += 1
                if ema is not None and global_step > ema_start_step:
                    ema.update_parameters(model)
                last_of_epoch = step_in_epoch == steps_per_epoch or global_step == total_steps
                periodic_save = cfg.save_every_steps and global_step % cfg.save_every_steps == 0
                log_now = window_steps == cfg.log_every or periodic_save or last_of_epoch
                if log_now or device.type == "cpu":  # on CUDA only when logging: .item() waits for the GPU
                    check_finite(nonfinite)
                if log_now:
                    elapsed = time.perf_counter() - window_start
                    row = {
                        "step": global_step,
                        "epoch": epoch,
                        "loss": window_loss.item() / window_steps,
                        "lr": scheduler.get_last_lr()[-1],
                        "img_per_s": window_steps * cfg.global_batch / max(elapsed, 1e-9),
                    }
                    metrics.write("steps", row, global_step)
                    if progress is not None:
                        progress.set_postfix(
                            loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.2e}", img_s=f"{row['img_per_s']:.0f}"
                        )
                    window_loss.zero_()
                    window_start, window_steps = time.perf_counter(), 0
                if progress is not None:
                    progress.update(1)
                if periodic_save and not last_of_epoch:
                    save("step")
            if progress is not None:
                progress.close()
                progress = None

            # ---- end of epoch (or of the run): validate, log, checkpoint
            row = {"epoch": epoch, "step": global_step, "train_loss": loss_sum.item() / max(epoch_steps, 1)}
            row["lr"] = scheduler.get_last_lr()[-1]
            kind = "step"
            if val_ds is not None:
                val_loader = loader_for(val_ds, ShardSampler(len(val_ds), batch_size, ctx.world_size, ctx.rank))
                stats = evaluate(model, val_loader, device, cfg, gpu_val)
                row.update({f"val_{k}": v for k, v in stats.items()})
                score = stats["top1"]
                if ema is not None and ema.n_averaged.item() > 0:
                    ema_stats = evaluate(ema.module, val_loader, device, cfg, gpu_val)
                    row.update({f"ema_{k}": v for k, v in ema_stats.items()})
                    score = max(score, ema_stats["top1"])
                if best_top1 is None or score > best_top1:
                    best_top1, kind = score, "best"
                row["best_top1"] = best_top1
            history.append(row)
            metrics.write("epochs", row, global_step)
            if ctx.is_main:
                log.info("epoch %d: %s", epoch, ", ".join(f"{k} {v:.4g}" for k, v in row.items() if k != "epoch"))
            if step_in_epoch == steps_per_epoch:
                epoch, step_in_epoch = epoch + 1, 0
            save(kind)
    finally:
        if progress is not None:
            progress.close()
        metrics.close()

    weights = _export_weights(model, ema, cfg, out) if ctx.is_main else None
    return TrainResult(out, global_step, epoch, history, best_top1, weights)


def _check_resumable(ckpt: dict, cfg: TrainConfig, num_samples: int, path: Path) -> None:
    order = ckpt["data_order"]
    stored = config_from_dict(ckpt["config"])
    if (order["seed"], order["global_batch"], order["num_samples"]) != (cfg.seed, cfg.global_batch, num_samples):
        raise ValueError(
            f"{path} was written with seed {order['seed']}, global batch {order['global_batch']} and "
            f"{order['num_samples']} training images; this run has {cfg.seed}, {cfg.global_batch}, {num_samples} — "
            "an exact resume needs the same (pass the same --seed / --global-batch and data)"
        )
    if stored.model != cfg.model:
        raise ValueError(f"{path} is a {stored.model} checkpoint, not {cfg.model}")


def _export_weights(model: nn.Module, ema, cfg: TrainConfig, out: Path) -> Path:
    """``model.safetensors`` (+ ``model_ema.safetensors``) with the architecture in the metadata, so the file
    loads with ``create_model(name, pretrained=FILE)`` or as ``--teacher FILE``."""
    from safetensors.torch import save_file

    meta = {"model": cfg.model, "num_classes": str(getattr(model, "num_classes", ""))}
    spec = getattr(model, "spec", None)
    if spec is not None and cfg.model not in MODEL_SPECS:  # a spec file: embed the table, the file may move
        meta["spec"] = json.dumps(spec_to_dict(spec))
    path = out / "model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path), metadata=meta)
    if ema is not None and ema.n_averaged.item() > 0:
        state = {k: v.contiguous() for k, v in ema.module.state_dict().items()}
        save_file(state, str(out / "model_ema.safetensors"), metadata=meta)
    return path


def resume_config(path: str | Path, **overrides) -> TrainConfig:
    """The config stored in a checkpoint, with ``overrides`` (e.g. to resume a run from its checkpoint alone)."""
    values = load_checkpoint(path)["config"]
    values.update({k: v for k, v in overrides.items() if v is not None})
    return config_from_dict(values)
