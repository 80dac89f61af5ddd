"""Classification training, top to bottom: set up (classes, model, the protocol, data, plan, optimiser) -> the
engine's step loop (``mnv4.engine``) with ``ClassificationTask`` -> final weights.

Determinism, exact resume, the NaN guard, checkpoints and logs are the engine's (``mnv4.engine.loop``); this module
says what a classification step computes and how an epoch is judged: cross-entropy (with label smoothing, Mixup /
CutMix, or a teacher's soft labels) on this process's micro-batches, and top-1 / top-5 of the model and its EMA on
``val/`` under the model's evaluation protocol (``best.pt`` follows the better of the two).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..engine import Engine, Optimization, OptimizerSettings, RunPlan, Task, claim_run_folder, staged_file
from ..engine.checkpoint import checkpoint_to_resume
from ..engine.device import autocast, make_ema, place_model, run_scope
from ..engine.distributed import DistContext, main_process_first
from ..engine.seeds import MicroBatchSampler, ShardSampler
from ..errors import UserError
from ..specs import MODEL_SPECS, spec_to_dict
from .config import TrainConfig, config_from_dict
from .data import BatchMix
from .distill import SoftLabels, kd_loss, load_teacher
from .inputs import TrainInputs, make_loader, resolve_model_defaults, train_classes
from .plan import fit_to_data, fit_to_device
from .validation import evaluate

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


# ----------------------------------------------------------------------------------------------- the run
def train(cfg: TrainConfig, model: nn.Module | None = None) -> TrainResult:
    """Train ``cfg.model`` (or the given ``model``) on ``cfg.data`` (``train/`` and ``val/`` ImageFolders).

    Single process, or one process per device under ``torchrun``. Returns the history; writes checkpoints, logs
    and ``model.safetensors`` to ``cfg.out`` (rank 0).
    """
    with run_scope(cfg.device, cfg.threads, cfg.deterministic) as ctx:
        return _train(cfg, ctx, model)


def _train(cfg: TrainConfig, ctx: DistContext, model: nn.Module | None) -> TrainResult:
    out = claim_run_folder(cfg.out, cfg.resume, is_main=ctx.is_main)  # before any work

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
    apply_recipe_to_model(model, cfg)
    model = place_model(model, ctx, cfg.channels_last, cfg.sync_bn)
    settings = OptimizerSettings("adamw", cfg.lr, cfg.weight_decay, (cfg.beta1, cfg.beta2), cfg.adam_eps,
                                 body_lr_scale=cfg.backbone_lr_scale)
    optim = Optimization.build(model, settings, ctx.device, plan.warmup_steps, plan.schedule_steps,
                               cfg.min_lr_fraction, cfg.precision, cfg.l2, cfg.grad_clip)
    mixer = None
    if cfg.mixup_prob > 0:
        mixer = BatchMix(len(classes), cfg.mixup_prob, cfg.mixup_alpha, cfg.cutmix_alpha, cfg.mixup_switch_prob)
    task = ClassificationTask(cfg, ctx, plan, inputs, len(classes), mixer, teacher, soft_labels)
    engine = Engine(task, cfg, ctx, plan, model, optim, make_ema(model, cfg.ema_decay), compile=cfg.compile,
                    tensorboard=cfg.tensorboard)

    # ---- resume (--resume auto on an empty --out starts a new run)
    with main_process_first(ctx):  # rank 0 sets unreadable checkpoints aside first
        found = checkpoint_to_resume(cfg.resume, out)
    if found is not None:
        engine.load(*reversed(found))
    elif cfg.resume and ctx.is_main:
        log.info("--resume %s: no checkpoint in %s yet: starting a new run", cfg.resume, out)
    if ctx.is_main:
        log_plan(cfg, plan, inputs, len(classes), fitted)

    state = engine.run()
    weights = export_weights(model, state.ema, cfg, out) if ctx.is_main else None
    return TrainResult(out, state.global_step, state.epoch, state.history, state.best_score, weights)


class ClassificationTask(Task):
    """Cross-entropy on this process's micro-batches (Mixup/CutMix targets, or a teacher's logits: online from a
    model, offline from a soft-label file); top-1 of the model and its EMA on ``val/`` at each epoch's end."""

    kind = "mnv4 training"
    score_key = "best_top1"

    def __init__(self, cfg: TrainConfig, ctx: DistContext, plan: RunPlan, inputs: TrainInputs, num_classes: int,
                 mixer: BatchMix | None, teacher: nn.Module | None, soft_labels: SoftLabels | None):
        self.cfg, self.ctx, self.plan, self.inputs, self.num_classes = cfg, ctx, plan, inputs, num_classes
        self.mixer, self.teacher, self.soft_labels = mixer, teacher, soft_labels

    def micro_batches(self, state):
        cfg, plan, ctx = self.cfg, self.plan, self.ctx
        aug_epoch = state.epoch % self.soft_labels.replicas if self.soft_labels is not None else state.epoch
        sampler = MicroBatchSampler(plan.num_samples, plan.global_batch, ctx.world_size, ctx.rank, plan.accum,
                                    cfg.seed, state.epoch, state.step_in_epoch, aug_epoch)
        return self.inputs.train_batches(sampler, cfg, ctx.device, plan.batch_size)

    def replaced(self) -> int:
        return self.inputs.train_bad.count

    def loss(self, model, batch, guard):
        """One micro-batch after the GPU augmentation, mixing or the teacher's soft labels; the guard sees the input
        before the model does."""
        images, labels, indices, aug_epochs, bad = batch
        self.inputs.train_bad(bad)
        cfg, device = self.cfg, self.ctx.device
        if self.inputs.gpu_augment is not None:
            images, labels = self.inputs.gpu_augment(images, labels)
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        guard.observe("input", images)
        if cfg.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        teacher_logits = None
        if self.soft_labels is not None:
            targets = F.one_hot(labels, self.num_classes).float()
            teacher_logits = self.soft_labels.lookup(aug_epochs, indices).to(device)
        elif self.mixer is not None:
            images, targets = self.mixer(images, labels)
        else:
            targets = labels
        with autocast(device, cfg.precision):
            logits = model(images)
            if self.teacher is not None:
                with torch.no_grad():
                    teacher_logits = self.teacher(images)
        loss = F.cross_entropy(logits.float(), targets, label_smoothing=cfg.label_smoothing)
        if teacher_logits is not None:
            kd = kd_loss(logits, teacher_logits, cfg.kd_temperature)
            loss = cfg.kd_alpha * kd + (1 - cfg.kd_alpha) * loss
        return {"loss": loss}

    def validate(self, engine: Engine) -> tuple[dict, float | None]:
        """Top-1 / top-5 / loss of the model and of its EMA on ``val/``; the score is the better top-1."""
        inputs, cfg, ctx, state = self.inputs, self.cfg, self.ctx, engine.state
        if inputs.val is None:
            return {}, None
        sampler = ShardSampler(len(inputs.val), self.plan.batch_size, ctx.world_size, ctx.rank)
        val_loader = make_loader(inputs.val, sampler, cfg, ctx.device)
        stats = self.evaluate(state.model, val_loader)
        row = {"val_" + k: stats[k] for k in ("top1", "top5", "loss", "skipped")}
        score = stats["top1"]
        if state.ema is not None and state.ema.n_averaged.item() > 0:
            ema_stats = self.evaluate(state.ema.module, val_loader)
            row.update({"ema_" + k: ema_stats[k] for k in ("top1", "top5", "loss")})
            score = max(score, ema_stats["top1"])
        if stats["skipped"] and ctx.is_main:
            log.warning("validation skipped %d undecodable image(s) (listed above): accuracy is over the %d scored",
                        stats["skipped"], stats["scored"])
        return row, score

    def evaluate(self, model: nn.Module, loader) -> dict:
        cfg = self.cfg
        return evaluate(model, loader, self.ctx.device, cfg.precision, cfg.channels_last, bad_log=self.inputs.val_bad)

    def check_resumable(self, ckpt: dict, path: Path) -> None:
        stored = config_from_dict(ckpt["config"])
        if stored.model != self.cfg.model:
            raise UserError(f"{path} is a {stored.model} checkpoint, not {self.cfg.model}: pass --model {stored.model}")


# ----------------------------------------------------------------------------------------------- set-up pieces
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
        soft_labels = SoftLabels(cfg.soft_labels, cfg, cfg.image_size, inputs.train)
    return teacher, soft_labels


def log_plan(cfg: TrainConfig, plan: RunPlan, inputs: TrainInputs, num_classes: int, fitted: list[str]) -> None:
    """The run's first lines: what it trains on, the step arithmetic, and every value chosen for this data."""
    log.info("training %s on %d images (%d classes) at %d px: %s", cfg.model, plan.num_samples, num_classes,
             cfg.image_size, plan.describe())
    clip = f"grad clip {cfg.grad_clip:g}" if cfg.grad_clip else "no grad clipping"
    ema = f"EMA {cfg.ema_decay:g} from step {plan.ema_start_step}" if cfg.ema_decay else "no EMA"
    log.info("AdamW lr %g (weight decay %g), %s, %s, %s", cfg.lr, cfg.weight_decay, clip, ema, cfg.precision)
    if inputs.val is not None:
        log.info("validation: %d images, the model's eval protocol (%s)", len(inputs.val), inputs.protocol.describe())
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
    with staged_file(path) as tmp:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp), metadata=meta)
    if ema is not None and ema.n_averaged.item() > 0:
        with staged_file(out / "model_ema.safetensors") as tmp:
            save_file({k: v.contiguous() for k, v in ema.module.state_dict().items()}, str(tmp), metadata=meta)
    return path
