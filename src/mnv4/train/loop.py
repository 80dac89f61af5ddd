"""The training loop, top to bottom: set up (model, data, plan, optimiser) -> resume -> for each epoch: optimiser
steps of micro-batches, logs, checkpoints -> validate at each epoch end -> final weights.

Determinism: every random draw of micro-batch ``c`` at optimiser step ``s`` (dropout, stochastic depth, Mixup/CutMix)
comes from torch's generator re-seeded with ``(seed, s, c)``, and every sample's augmentation from its own seed (see
``mnv4.train.data``). So a run's result depends on the seed, the global batch and the chunk size only: resuming from a
checkpoint, or splitting the same chunks over more processes instead of accumulation steps, gives the same numbers.
"""

from __future__ import annotations

import json
import logging
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from ..errors import UserError
from ..specs import MODEL_SPECS, spec_to_dict
from .checkpoint import (
    atomic_save,
    checkpoint_name,
    prune_checkpoints,
    remove_stale_temp_files,
)
from .config import TrainConfig
from .data import STEP_STREAM, BatchMix, MicroBatchSampler, ShardSampler, mix_seed
from .distill import SoftLabels, kd_loss, load_teacher
from .distributed import (
    DistContext,
    barrier,
    cleanup_distributed,
    convert_sync_batchnorm,
    init_distributed,
)
from .guard import NonFiniteGuard
from .inputs import TrainInputs, make_loader, resolve_model_defaults, train_classes
from .metrics import MetricLog
from .optim import Optimization
from .plan import RunPlan, fit_to_data, fit_to_device
from .resume import resume
from .state import TrainState
from .validation import autocast, evaluate

log = logging.getLogger("mnv4.train")


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


@dataclass
class Run:
    """What stays fixed while a run trains (``TrainState`` is what changes)."""

    cfg: TrainConfig  # resolved: the model's protocol and the data-fitted values filled in
    ctx: DistContext
    plan: RunPlan
    inputs: TrainInputs
    out: Path
    train_model: nn.Module  # the model as run: DDP-wrapped and/or compiled
    guard: NonFiniteGuard
    metrics: MetricLog
    num_classes: int
    mixer: BatchMix | None = None
    teacher: nn.Module | None = None
    soft_labels: SoftLabels | None = None


# ----------------------------------------------------------------------------------------------- the run
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
    configure_torch(cfg, ctx.device)
    out = Path(cfg.out)

    # ---- model and data: the model's evaluation protocol, the engine for the device, the batch and warm-up for the
    # data
    classes = train_classes(cfg)
    torch.manual_seed(cfg.seed)  # model init: identical on every rank
    if model is None:
        model = build_model(cfg, len(classes))
    cfg = resolve_model_defaults(cfg, model)
    cfg, for_device = fit_to_device(cfg, ctx.device)
    inputs = TrainInputs.build(cfg, ctx)
    cfg, fitted = fit_to_data(cfg, len(inputs.train), ctx.world_size)
    fitted += for_device
    plan = RunPlan.build(cfg, len(inputs.train), ctx.world_size)
    teacher, soft_labels = distillation_sources(cfg, inputs, len(classes), ctx.device)

    # ---- model, EMA, optimiser, schedule
    model = prepare_model(model, cfg, ctx)
    optim = Optimization.build(model, cfg, ctx.device, plan.warmup_steps, plan.schedule_steps)
    ema = None
    if cfg.ema_decay:
        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)
    state = TrainState(model, optim, ema)

    # ---- resume (--resume auto on an empty --out starts a new run)
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        for path in remove_stale_temp_files(out):
            log.info("removed %s, left by a checkpoint write that was killed", path.name)
    resume(state, cfg, plan, out, ctx)

    mixer = None
    if cfg.mixup_prob > 0:
        mixer = BatchMix(len(classes), cfg.mixup_prob, cfg.mixup_alpha, cfg.cutmix_alpha, cfg.mixup_switch_prob)
    run = Run(
        cfg=cfg,
        ctx=ctx,
        plan=plan,
        inputs=inputs,
        out=out,
        train_model=wrap_for_training(model, cfg, ctx),
        guard=NonFiniteGuard(model, ctx.device, out, distributed=ctx.enabled),
        # rows after the resumed step (or, in a new run, rows of a run killed before its first checkpoint) go
        metrics=MetricLog(out, ctx.is_main, cfg.tensorboard, resume_step=state.global_step),
        num_classes=len(classes),
        mixer=mixer,
        teacher=teacher,
        soft_labels=soft_labels,
    )
    if ctx.is_main:
        log_plan(run, fitted)

    try:
        while state.global_step < plan.total_steps:
            run_epoch(run, state)
    finally:
        run.metrics.close()

    weights = export_weights(model, ema, cfg, out) if ctx.is_main else None
    return TrainResult(out, state.global_step, state.epoch, state.history, state.best_top1, weights)


def run_epoch(run: Run, state: TrainState) -> None:
    """The optimiser steps left in this epoch (or in the run), with step logs and periodic checkpoints, then the
    epoch's end."""
    cfg, plan, ctx = run.cfg, run.plan, run.ctx
    aug_epoch = state.epoch % run.soft_labels.replicas if run.soft_labels is not None else state.epoch
    sampler = MicroBatchSampler(
        plan.num_samples,
        plan.global_batch,
        ctx.world_size,
        ctx.rank,
        plan.accum,
        cfg.seed,
        state.epoch,
        state.step_in_epoch,
        aug_epoch,
    )
    batches = run.inputs.train_batches(sampler, cfg, ctx.device, plan.batch_size)
    steps = min(plan.steps_per_epoch - state.step_in_epoch, plan.total_steps - state.global_step)
    progress = None
    if ctx.is_main and cfg.progress:
        from tqdm.auto import tqdm

        progress = tqdm(total=steps, desc=f"epoch {state.epoch}", leave=False, dynamic_ncols=True)
    window_loss = torch.zeros((), dtype=torch.float64, device=ctx.device)  # steps.csv: mean over the window
    window_start, window_steps = time.perf_counter(), 0
    state.model.train()
    try:
        for _ in range(steps):
            window_loss += train_step(run, state, batches)
            window_steps += 1
            last_of_epoch = state.step_in_epoch == plan.steps_per_epoch or state.global_step == plan.total_steps
            periodic_save = cfg.save_every_steps and state.global_step % cfg.save_every_steps == 0
            if window_steps == cfg.log_every or periodic_save or last_of_epoch:
                run.guard.check()  # reads the device's NaN flag: only where logs are read anyway
                row = {
                    "step": state.global_step,
                    "epoch": state.epoch,
                    "loss": window_loss.item() / window_steps,
                    "lr": state.optim.lr,
                    "img_per_s": window_steps * plan.global_batch / max(time.perf_counter() - window_start, 1e-9),
                }
                run.metrics.write("steps", row, state.global_step)
                if progress is not None:
                    progress.set_postfix(
                        loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.2e}", img_s=f"{row['img_per_s']:.0f}"
                    )
                window_loss.zero_()
                window_start, window_steps = time.perf_counter(), 0
            if progress is not None:
                progress.update(1)
            if periodic_save and not last_of_epoch:
                save_checkpoint(run, state, best=False)
    finally:
        if progress is not None:
            progress.close()
    end_epoch(run, state)


def train_step(run: Run, state: TrainState, batches) -> torch.Tensor:
    """One optimiser step: ``accum`` micro-batches forward and backward, the update, the EMA. Returns the step's
    loss (mean over the micro-batches) on the device."""
    cfg, plan, ctx = run.cfg, run.plan, run.ctx
    run.guard.begin_step(state.global_step, state.epoch)
    replaced_before = run.inputs.train_bad.count
    step_loss = torch.zeros((), dtype=torch.float64, device=ctx.device)
    for a in range(plan.accum):
        images, labels, indices, aug_epochs, bad = next(batches)
        run.inputs.train_bad(bad)
        # dropout / stochastic depth / mixup of this chunk: a function of (seed, step, chunk) only
        torch.manual_seed(mix_seed(cfg.seed, STEP_STREAM, state.global_step, ctx.rank * plan.accum + a))
        loss = micro_batch_loss(run, images, labels, indices, aug_epochs)
        sync = a == plan.accum - 1 or not ctx.enabled
        with nullcontext() if sync else run.train_model.no_sync():
            state.optim.scaler.scale(loss / plan.accum).backward()
        step_loss += loss.detach() / plan.accum
    state.optim.step(state.model, cfg, run.guard)
    state.global_step += 1
    state.step_in_epoch += 1
    if state.ema is not None and state.global_step > plan.ema_start_step:
        state.ema.update_parameters(state.model)
    state.totals.add_step(step_loss, run.inputs.train_bad.count - replaced_before)
    return step_loss


def micro_batch_loss(run: Run, images, labels, indices, aug_epochs) -> torch.Tensor:
    """Forward one micro-batch (after the GPU augmentation, mixing or the teacher's soft labels) and its loss; the
    guard sees the input before the model does and the loss before the backward pass."""
    cfg, device = run.cfg, run.ctx.device
    if run.inputs.gpu_augment is not None:
        images, labels = run.inputs.gpu_augment(images, labels)
    images = images.to(device, non_blocking=True)
    labels = labels.to(device, non_blocking=True)
    run.guard.observe("input", images)
    if cfg.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    teacher_logits = None
    if run.soft_labels is not None:
        targets = F.one_hot(labels, run.num_classes).float()
        teacher_logits = run.soft_labels.lookup(aug_epochs, indices).to(device)
    elif run.mixer is not None:
        images, targets = run.mixer(images, labels)
    else:
        targets = labels
    with autocast(device, cfg.precision):
        logits = run.train_model(images)
        if run.teacher is not None:
            with torch.no_grad():
                teacher_logits = run.teacher(images)
    loss = F.cross_entropy(logits.float(), targets, label_smoothing=cfg.label_smoothing)
    if teacher_logits is not None:
        kd = kd_loss(logits, teacher_logits, cfg.kd_temperature)
        loss = cfg.kd_alpha * kd + (1 - cfg.kd_alpha) * loss
    run.guard.observe("loss", loss)
    return loss


def end_epoch(run: Run, state: TrainState) -> None:
    """The end of an epoch (or of the run, mid-epoch with ``max_steps``): validate the model and its EMA, write
    the epoch row, checkpoint (as ``best.pt`` too when the score is the best so far)."""
    cfg, ctx = run.cfg, run.ctx
    state.totals.reduce(ctx.world_size)
    row = {
        "epoch": state.epoch,
        "step": state.global_step,
        "train_loss": state.totals.mean_loss,
        "lr": state.optim.lr,
        "train_replaced": state.totals.replaced,
    }
    new_best = False
    if run.inputs.val is not None:
        val_loader = make_loader(
            run.inputs.val, ShardSampler(len(run.inputs.val), run.plan.batch_size, ctx.world_size, ctx.rank), cfg,
            ctx.device,
        )  # fmt: skip
        stats = validate(run, state.model, val_loader)
        row.update({f"val_{k}": stats[k] for k in ("top1", "top5", "loss", "skipped")})
        score = stats["top1"]
        if state.ema is not None and state.ema.n_averaged.item() > 0:
            ema_stats = validate(run, state.ema.module, val_loader)
            row.update({f"ema_{k}": ema_stats[k] for k in ("top1", "top5", "loss")})
            score = max(score, ema_stats["top1"])
        if state.best_top1 is None or score > state.best_top1:
            state.best_top1, state.best_step, new_best = score, state.global_step, True
        row["best_top1"] = state.best_top1
        if stats["skipped"] and ctx.is_main:
            log.warning(
                "validation skipped %d undecodable image(s) (listed above): accuracy is over the %d scored",
                stats["skipped"],
                stats["scored"],
            )
    # an epoch row written when max_steps ended a run mid-epoch is replaced by the whole epoch's
    state.history = [r for r in state.history if r["epoch"] != state.epoch] + [row]
    if ctx.is_main:
        run.metrics.keep_rows("epochs", lambda r: int(r["epoch"]) != state.epoch)
        run.metrics.write("epochs", row, state.global_step)
        log.info("epoch %d: %s", state.epoch, ", ".join(f"{k} {v:.4g}" for k, v in row.items() if k != "epoch"))
    if state.step_in_epoch == run.plan.steps_per_epoch:
        state.start_next_epoch()
    save_checkpoint(run, state, best=new_best)


def validate(run: Run, model: nn.Module, loader) -> dict:
    cfg = run.cfg
    return evaluate(model, loader, run.ctx.device, cfg.precision, cfg.channels_last, bad_log=run.inputs.val_bad)


# ----------------------------------------------------------------------------------------------- checkpoints
def save_checkpoint(run: Run, state: TrainState, best: bool) -> None:
    """Rank 0 writes ``best.pt`` (when this step is the best so far) and then ``ckpt-<step>.pt``; the others wait.

    ``best.pt`` first: a kill between the two writes leaves a ``best.pt`` newer than the newest checkpoint, which
    ``reconcile_best`` resolves on resume; the other order would leave a checkpoint whose recorded best is not the
    model in ``best.pt``."""
    state.totals.reduce(run.ctx.world_size)
    if run.ctx.is_main:
        ckpt = state.state_dict(run.cfg, run.plan.num_samples)
        if best:
            atomic_save(ckpt, run.out / "best.pt")
        atomic_save(ckpt, run.out / checkpoint_name(state.global_step))
        prune_checkpoints(run.out, run.cfg.keep_last)
    barrier(run.ctx)


# ----------------------------------------------------------------------------------------------- set-up pieces
def configure_torch(cfg: TrainConfig, device: torch.device) -> None:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def build_model(cfg: TrainConfig, num_classes: int) -> nn.Module:
    """The model for ``cfg``: pretrained when ``cfg.pretrained`` (True = the tag's weights, or a file), with the
    checkpoint's classifier if it has ``num_classes`` outputs, else a new one.

    A new classifier starts at zero (as big_vision's ViT heads and BiT's fine-tuning heads do). The model's own
    initialisation (timm's, U(+-1/sqrt(outputs))) is made for 1000 classes: for 10 it starts with logits of std ~6
    and a loss ~8, and a short run spends its first epoch recovering from that."""
    from ..factory import create_model

    kwargs = dict(drop_rate=cfg.dropout, drop_path_rate=cfg.drop_path, attn_impl=cfg.attn_impl)
    if cfg.pretrained:
        model = create_model(cfg.model, pretrained=cfg.pretrained, **kwargs)
        if model.num_classes == num_classes:
            return model
        model.reset_classifier(num_classes)
    else:
        model = create_model(cfg.model, num_classes=num_classes, **kwargs)
    nn.init.zeros_(model.classifier.weight)
    nn.init.zeros_(model.classifier.bias)
    return model


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
        # TF's flat_stochastic_depth_drop_rate: the same rate on every residual branch (TF mobilenet.py; the paper
        # gives only the peak rate, Tab. 10)
        for m in model.modules():
            if hasattr(m, "drop_path") and getattr(m, "has_skip", False):
                m.drop_path = StochasticDepth(cfg.drop_path, mode="row")


def prepare_model(model: nn.Module, cfg: TrainConfig, ctx: DistContext) -> nn.Module:
    """The recipe's BN settings and drop-path schedule, the device and memory format, SyncBN under DDP."""
    apply_recipe_to_model(model, cfg)
    model.to(ctx.device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    if cfg.sync_bn and ctx.enabled:
        if ctx.device.type != "cuda":
            raise UserError("--sync-bn needs CUDA (PyTorch's SyncBatchNorm does not synchronise CPU tensors)")
        model = convert_sync_batchnorm(model)
    return model


def wrap_for_training(model: nn.Module, cfg: TrainConfig, ctx: DistContext) -> nn.Module:
    wrapped = model
    if ctx.enabled:
        ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        wrapped = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if cfg.compile:
        wrapped = torch.compile(wrapped)
    return wrapped


def distillation_sources(
    cfg: TrainConfig, inputs: TrainInputs, num_classes: int, device: torch.device
) -> tuple[nn.Module | None, SoftLabels | None]:
    """Online distillation's teacher, or offline distillation's stored soft labels (or neither)."""
    teacher = soft_labels = None
    if cfg.teacher:
        teacher = load_teacher(cfg.teacher, num_classes, cfg.teacher_model).to(device)
        if cfg.channels_last:
            teacher = teacher.to(memory_format=torch.channels_last)
    if cfg.soft_labels:
        if cfg.mixup_prob > 0:
            raise UserError("offline distillation (--soft-labels) needs --mixup-prob 0: the stored labels are per crop")
        if cfg.data_pipeline != "cpu":
            raise UserError("offline distillation re-creates the CPU pipeline's crops; use --data-pipeline cpu")
        soft_labels = SoftLabels(cfg.soft_labels, cfg, cfg.image_size, inputs.train.classes)
    return teacher, soft_labels


def log_plan(run: Run, fitted: list[str]) -> None:
    """The run's first lines: what it trains on, the step arithmetic, and every value chosen for this data."""
    cfg, plan = run.cfg, run.plan
    protocol = run.inputs.protocol
    log.info(
        "training %s on %d images (%d classes) at %d px: %s",
        cfg.model,
        plan.num_samples,
        run.num_classes,
        cfg.image_size,
        plan.describe(),
    )
    clip = f"grad clip {cfg.grad_clip:g}" if cfg.grad_clip else "no grad clipping"
    ema = f"EMA {cfg.ema_decay:g} from step {plan.ema_start_step}" if cfg.ema_decay else "no EMA"
    log.info("AdamW lr %g (weight decay %g), %s, %s, %s", cfg.lr, cfg.weight_decay, clip, ema, cfg.precision)
    if run.inputs.val is not None:
        log.info("validation: %d images, the model's eval protocol (%s)", len(run.inputs.val), protocol.describe())
    for note in fitted:
        log.info("fitted to the data: %s", note)
    warning = plan.too_short()
    if warning and not cfg.pretrained:
        log.warning("%s", warning)


def export_weights(model: nn.Module, ema, cfg: TrainConfig, out: Path) -> Path:
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
