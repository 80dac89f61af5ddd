"""Knowledge distillation: the KD loss, teachers from names or files, and the paper's offline mode.

Offline mode (paper §8): the teacher labels augmented crops ahead of time and the student trains on those
stored labels. Here a crop is a pure function of ``(seed, aug_epoch, index)`` (see ``mnv4.train.data``), so the file
stores only the teacher's logits per (replica, image) plus the seed and augmentation settings; during student
training epoch ``e`` re-creates replica ``e % replicas`` bit-for-bit and looks its labels up. Not reproduced: the
paper's JPEG re-encode of each crop before the teacher sees it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..engine.outputs import samples_fingerprint, staged_file
from ..errors import UserError

log = logging.getLogger("mnv4.train")

# The settings that decide what a crop looks like; a soft-label file is only valid with the same values.
AUG_FIELDS = ("seed", "crop_scale_min", "hflip", "randaug_layers", "randaug_magnitude", "randaug_prob", "mean", "std")


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(teacher || student) on temperature-softened distributions, times T^2 (Hinton et al.) so gradients keep
    their scale. At T = 1 this is the paper's cross-entropy to the teacher's soft labels minus a constant."""
    t = temperature
    log_p_student = F.log_softmax(student_logits.float() / t, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits.float() / t, dim=-1)
    return F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True) * (t * t)


def load_teacher(spec: str, num_classes: int, teacher_model: str | None = None) -> nn.Module:
    """A frozen teacher in eval mode from: our training checkpoint (``.pt``), a ``.safetensors`` file (architecture
    from its metadata written by ``mnv4 train``, or ``teacher_model``), or a model name (pretrained weights)."""
    from ..engine.checkpoint import load_checkpoint
    from ..factory import create_model

    path = Path(spec)
    if path.suffix == ".pt":
        ckpt = load_checkpoint(path)
        state = ckpt.get("ema") or ckpt["model"]
        state = {k.removeprefix("module."): v for k, v in state.items() if k != "n_averaged"}
        teacher = _teacher_from_state(spec, teacher_model or ckpt["config"]["model"], state)
    elif path.suffix == ".safetensors":
        from safetensors.torch import load_file

        meta = read_safetensors_metadata(path, "teacher file")
        arch = teacher_model or meta.get("model")
        if not teacher_model and meta.get("spec"):  # a searched / custom architecture embeds its table
            from ..specs import spec_from_dict

            arch = spec_from_dict(json.loads(meta["spec"]), f"{spec} metadata")
        if not arch:
            raise UserError(f"teacher file {spec!r} does not say its architecture; pass --teacher-model NAME")
        teacher = _teacher_from_state(spec, arch, load_file(str(path)))
    else:
        teacher = create_model(spec, pretrained=True)  # its own head: a re-initialised one would teach noise
    if teacher.num_classes != num_classes:
        raise UserError(f"teacher {spec!r} predicts {teacher.num_classes} classes but the data has {num_classes}")
    teacher.eval().requires_grad_(False)
    return teacher


def _teacher_from_state(spec: str, arch: str, state: dict[str, torch.Tensor]) -> nn.Module:
    from ..factory import create_model

    if "classifier.weight" not in state:
        raise UserError(f"teacher {spec!r} has no classifier weights: a teacher must be a classification model")
    teacher = create_model(arch, num_classes=int(state["classifier.weight"].shape[0]))
    try:
        teacher.load_state_dict(state)
    except RuntimeError as err:  # missing / unexpected / mis-shaped keys: the file is another architecture
        first = str(err).splitlines()[0]
        raise UserError(f"teacher {spec!r} does not fit {arch} ({first}); pass the right --teacher-model") from None
    return teacher


def read_safetensors_metadata(path: Path, what: str) -> dict[str, str]:
    """The metadata of a safetensors file, or one ``UserError`` for a missing or unreadable file."""
    from safetensors import safe_open

    if not path.is_file():
        raise UserError(f"{what} {str(path)!r} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except Exception as err:  # safetensors raises its own error type for a truncated or foreign file
        raise UserError(f"cannot read {what} {str(path)!r}: {err}") from None


def aug_fingerprint(cfg, image_size: int) -> dict:
    values = {name: getattr(cfg, name) for name in AUG_FIELDS}
    values["mean"], values["std"] = list(values["mean"]), list(values["std"])
    values["image_size"] = image_size
    return values


@torch.no_grad()
def precompute_soft_labels(
    teacher: nn.Module,
    train_dir: str | Path,
    cfg,
    out_path: str | Path,
    replicas: int = 1,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    image_size: int | None = None,
) -> Path:
    """Run ``teacher`` on ``replicas`` augmented copies of every training image (the crops the student will see in
    epochs ``r, r + replicas, ...``) and store the logits (float16) with the seed and augmentation settings.

    ``cfg`` is the student's run: its image size (``image_size``, else ``cfg.image_size``, else the student model's
    native size) and normalisation (else the student model's) make the crops."""
    import dataclasses

    from safetensors.torch import save_file
    from torch.utils.data import DataLoader

    from .data import BadFileLog, ImageFolderDataset, collate, train_transform
    from .inputs import resolve_model_defaults

    if replicas < 1:
        raise UserError(f"--replicas must be >= 1, got {replicas}")
    cfg = resolve_model_defaults(dataclasses.replace(cfg, image_size=image_size or cfg.image_size), cfg.model)
    size = cfg.image_size
    dataset = ImageFolderDataset(train_dir, train_transform(size, cfg), seed=cfg.seed)
    teacher = teacher.to(device).eval()
    logits = torch.zeros(replicas, len(dataset), teacher.num_classes, dtype=torch.float16)
    bad_log = BadFileLog()
    for r in range(replicas):
        keys = [(r, i) for i in range(len(dataset))]
        batches = [keys[i : i + batch_size] for i in range(0, len(keys), batch_size)]
        loader = DataLoader(dataset, batch_sampler=batches, num_workers=cfg.workers, collate_fn=collate)
        for images, _, indices, _, bad in loader:
            bad_log(bad)
            logits[r, indices] = teacher(images.to(device)).float().cpu().half()
        log.info("soft labels: replica %d/%d done", r + 1, replicas)
    meta = {
        "replicas": str(replicas),
        "num_samples": str(len(dataset)),
        "data": dataset_fingerprint(dataset),
        "classes": json.dumps(dataset.classes),
        "augmentation": json.dumps(aug_fingerprint(cfg, size)),
        "teacher": getattr(getattr(teacher, "spec", None), "name", type(teacher).__name__),
    }
    with staged_file(out_path) as tmp:
        save_file({"logits": logits}, str(tmp), metadata=meta)
    return Path(out_path)


def dataset_fingerprint(dataset) -> str:
    """What a soft-label file is tied to: the training set's classes and, in order, its files (relative path, label,
    size). The labels are looked up by sample index, so one image more, fewer or renamed shifts every label."""
    return samples_fingerprint(dataset.samples, dataset.root, dataset.classes)


class SoftLabels:
    """Stored teacher logits, checked against the run that uses them."""

    def __init__(self, path: str | Path, cfg, image_size: int, dataset):
        """``dataset``: the training set the labels are looked up for (an ``ImageFolderDataset``); the file must
        have been made from exactly it, with ``cfg``'s augmentation at ``image_size``."""
        from safetensors.torch import load_file

        path = Path(path)
        meta = read_safetensors_metadata(path, "soft-label file")
        if not {"replicas", "classes", "num_samples", "augmentation"} <= set(meta):
            raise UserError(f"{str(path)!r} is not a soft-label file (write one with --precompute-soft-labels)")
        if json.loads(meta["classes"]) != dataset.classes:
            raise UserError(f"soft labels in {str(path)!r} were made for other classes than this data set's")
        made_for = meta.get("data")  # files of earlier versions have no fingerprint: the image count must agree
        if int(meta["num_samples"]) != len(dataset) or (made_for and made_for != dataset_fingerprint(dataset)):
            raise UserError(f"soft labels in {str(path)!r} were made from other training images ({meta['num_samples']} "
                            f"images, this data set has {len(dataset)} or other files): the labels are looked up by "
                            "image, so make the file again from this data set (--precompute-soft-labels)")
        self.logits = load_file(str(path))["logits"]
        self.replicas = int(meta["replicas"])
        if int(meta["num_samples"]) != self.logits.shape[1]:
            raise UserError(f"soft-label file {str(path)!r} is inconsistent (logits do not match num_samples)")
        stored, current = json.loads(meta["augmentation"]), aug_fingerprint(cfg, image_size)
        differ = sorted(k for k in stored if stored[k] != current.get(k))
        if differ:
            detail = ", ".join(f"{k}: file {stored[k]!r} vs run {current.get(k)!r}" for k in differ)
            raise UserError(f"soft labels in {str(path)!r} were made for other crops ({detail}); use the same settings")

    def lookup(self, aug_epochs: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        return self.logits[aug_epochs, indices].float()
