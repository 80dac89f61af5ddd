"""Real data for tests: scikit-learn's 1,797 handwritten digits (8x8, 16 grey levels), written as an ImageFolder.

Shared by the training and quantization tests. The images are upscaled (bicubic) to ``size`` and stored as RGB PNGs
under ``root/train/<digit>/`` and ``root/val/<digit>/`` with a fixed, stratified split.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_digits_imagefolder(root: str | Path, size: int = 32, val_fraction: float = 0.2, seed: int = 0) -> Path:
    """Write the digits as ``root/{train,val}/<label>/<index>.png``; returns ``root``. Idempotent."""
    from PIL import Image
    from sklearn.datasets import load_digits

    root = Path(root)
    if (root / "done").exists():
        return root
    digits = load_digits()
    images = (digits.images / 16.0 * 255.0).clip(0, 255).astype(np.uint8)
    rng = np.random.default_rng(seed)
    for label in range(10):
        idx = np.flatnonzero(digits.target == label)
        rng.shuffle(idx)
        n_val = int(round(len(idx) * val_fraction))
        for split, part in (("val", idx[:n_val]), ("train", idx[n_val:])):
            folder = root / split / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            for i in part:
                img = Image.fromarray(images[i], mode="L").resize((size, size), Image.BICUBIC).convert("RGB")
                img.save(folder / f"{i:04d}.png")
    (root / "done").touch()
    return root


def copy_subset(full: str | Path, root: str | Path, per_class: dict[str, int]) -> Path:
    """The first ``per_class[split]`` images of each class of ``full`` copied to ``root`` (same layout)."""
    import shutil

    full, root = Path(full), Path(root)
    for split, count in per_class.items():
        for label_dir in sorted((full / split).iterdir()):
            (root / split / label_dir.name).mkdir(parents=True, exist_ok=True)
            for src in sorted(label_dir.glob("*.png"))[:count]:
                shutil.copy(src, root / split / label_dir.name / src.name)
    return root


def small_config(data, out, **kw):
    """The short runs of the training tests: Conv-S at 32 px, 2 epochs of 5 steps of 20 on ``copy_subset``'s 100
    training digits, one thread, deterministic kernels (so two runs give the same bits)."""
    from mnv4.train import TrainConfig

    values = dict(
        model="mobilenetv4_conv_small",
        data=str(data),
        out=str(out),
        image_size=32,
        epochs=2,
        global_batch=20,
        lr=2e-3,
        warmup_epochs=1,
        val_crop_pct=1.0,
        crop_scale_min=0.7,
        workers=0,
        threads=1,
        progress=False,
        tensorboard=False,
        log_every=2,
        deterministic=True,
    )
    values.update(kw)
    return TrainConfig(**values)


class Killed(BaseException):
    """Stands for SIGKILL: no ``except Exception`` stops it."""


def model_killed_in_forward(cfg, num_classes: int, forward: int):
    """The model ``train(cfg)`` would build (same seed), raising ``Killed`` at its ``forward``-th training-mode
    forward pass -- a kill in the middle of that optimiser step, after the checkpoints before it."""
    import torch

    from mnv4.train import build_model

    torch.manual_seed(cfg.seed)  # the initialisation train() makes from the seed
    model = build_model(cfg, num_classes=num_classes)
    calls = {"n": 0}

    def kill(module, inputs):
        calls["n"] += module.training
        if calls["n"] == forward:
            raise Killed

    model.register_forward_pre_hook(kill)
    return model
