"""End-to-end training on real data (scikit-learn's handwritten digits), CPU only:

- SIGKILL at a random step + ``--resume auto`` gives bit-identical weights to an uninterrupted run;
- ``torchrun`` with 2 gloo processes gives the same weights as 1 process with the same global batch;
- ``mobilenetv4_conv_small`` with the defaults (no recipe: batch and warm-up fitted to the data) reaches >= 88%
  validation accuracy in 8 epochs (slow);
- offline distillation: a trained teacher labels seeded crops, a student re-creates and learns from them (slow).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mnv4.engine.checkpoint import list_checkpoints
from mnv4.train import TrainConfig, load_teacher, precompute_soft_labels, train

pytest.importorskip("sklearn", reason="the digits data set comes from scikit-learn (dev extra)")

VENV_BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    from digits import write_digits_imagefolder

    return write_digits_imagefolder(tmp_path_factory.mktemp("digits32"), size=32)


@pytest.fixture(scope="module")
def small_digits(digits, tmp_path_factory):
    """12 training / 5 validation images per class."""
    from digits import copy_subset

    return copy_subset(digits, tmp_path_factory.mktemp("digits_small"), {"train": 12, "val": 5})


def cli_args(data: Path, out: Path, *extra: str) -> list[str]:
    # every source of randomness switched on: RandAugment, Mixup/CutMix, dropout, stochastic depth, EMA
    return [
        "--data", str(data), "--out", str(out), "--model", "mobilenetv4_conv_small", "--image-size", "32",
        "--epochs", "3", "--global-batch", "20", "--lr", "2e-3", "--warmup-epochs", "1", "--workers", "0",
        "--threads", "1", "--deterministic", "--no-progress", "--no-tensorboard", "--dropout", "0.2",
        "--drop-path", "0.1", "--mixup-prob", "0.5", "--randaug-layers", "1", "--ema-decay", "0.9",
        "--set", "val_crop_pct=1.0", "--set", "crop_scale_min=0.5", "--log-every", "1", *extra,
    ]  # fmt: skip


def run_train(args: list[str], nproc: int = 0, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    if nproc:
        cmd = [str(VENV_BIN / "torchrun"), "--standalone", f"--nproc-per-node={nproc}", "-m", "mnv4.train", *args]
    else:
        cmd = [sys.executable, "-m", "mnv4.train", *args]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def test_sigkill_and_resume_is_bit_identical(small_digits, tmp_path):
    """An uninterrupted run vs one killed with SIGKILL right after a random checkpoint and resumed from it.

    Deterministic CPU kernels, 1 thread; the data order, each sample's augmentation and each chunk's dropout /
    stochastic-depth / mixup draws are functions of (seed, epoch, index) and (seed, step, chunk), and the
    checkpoint holds model, EMA, optimiser, scheduler, scaler, position and RNG states, so the resumed run must
    reproduce the uninterrupted one to the last bit (weights and EMA)."""
    full = tmp_path / "full"
    run_train(cli_args(small_digits, full))

    killed = tmp_path / "killed"
    target = random.Random().randint(2, 14)  # 6 steps/epoch x 3 epochs = 18 steps; a checkpoint every 2
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "mnv4.train", *cli_args(small_digits, killed, "--save-every-steps", "2")]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            found = list_checkpoints(killed)
            if found and int(found[-1].stem.split("-")[1]) >= target:
                break
            time.sleep(0.05)
        assert proc.poll() is None, f"the run ended before step {target}: {proc.stderr.read()[-2000:]}"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert not (killed / "model.safetensors").exists()
    resumed_from = list_checkpoints(killed)[-1].name
    run_train(cli_args(small_digits, killed, "--save-every-steps", "2", "--resume", "auto"))

    for name in ("model.safetensors", "model_ema.safetensors"):
        a, b = load_weights(full / name), load_weights(killed / name)
        assert a.keys() == b.keys()
        different = [k for k in a if not torch.equal(a[k], b[k])]
        assert not different, f"killed at/after step {target}, resumed from {resumed_from}: {different[:5]} differ"


def test_torchrun_two_processes_match_one(small_digits, tmp_path):
    """``torchrun --nproc-per-node 2`` (gloo) vs 1 process, global batch 20 in both.

    BatchNorm is the catch: a rank normalises with its own 10 images, so a single process with one batch of 20
    computes something else. The fair single-process counterpart accumulates two chunks of 10 — the same chunks
    the two ranks get (rank r runs chunk r; see MicroBatchSampler) — and then the gradients are the same sums in a
    different order, and each chunk's dropout / drop-path / mixup draws are seeded by (seed, step, chunk) on
    whichever process runs it. Parameters must agree to float rounding. BN running statistics are not compared:
    under DDP they come from rank 0's chunks only (buffers are broadcast from rank 0), in the single process from
    both chunks."""
    from mnv4.testing import relative_error

    single, ddp = tmp_path / "single", tmp_path / "ddp"
    extra = ("--batch-size", "10", "--epochs", "2", "--ema-decay", "0")
    run_train(cli_args(small_digits, single, *extra))
    run_train(cli_args(small_digits, ddp, *extra), nproc=2)
    a, b = load_weights(single / "model.safetensors"), load_weights(ddp / "model.safetensors")
    params = [k for k in a if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    worst = max(relative_error(b[k], a[k]) for k in params)
    assert worst < 1e-3, worst
    # and it is not trivially equal because nothing trained
    import mnv4

    init = mnv4.create_model("mobilenetv4_conv_small", num_classes=10).state_dict()
    assert relative_error(a["conv_stem.weight"], init["conv_stem.weight"]) > 1e-2


def digits_config(data: Path, out: Path, **kw) -> TrainConfig:
    """Settings tuned for the 32 px digits (8 epochs of 44 steps: 96.9% top-1 at the end, >= 96.4% from epoch 5
    on): gentle crops, no flips (digits are not mirror-symmetric), an EMA; the distillation student's."""
    values = dict(
        model="mobilenetv4_conv_small",
        data=str(data),
        out=str(out),
        image_size=32,
        epochs=8,
        global_batch=32,
        lr=2e-3,
        warmup_epochs=1,
        weight_decay=0.05,
        label_smoothing=0.1,
        val_crop_pct=1.0,
        crop_scale_min=0.85,
        hflip=False,
        grad_clip=1.0,
        ema_decay=0.99,
        ema_start_epochs=4,  # as TF's Conv-S EMA starts after warm-up: early BN statistics would poison it
        workers=0,
        threads=1,
        progress=False,
        tensorboard=False,
        seed=0,
    )
    values.update(kw)
    return TrainConfig(**values)


@pytest.fixture(scope="module")
def trained_conv_small(digits, tmp_path_factory):
    """A newcomer's run: no recipe, nothing tuned - only the data, the size and the number of epochs."""
    out = tmp_path_factory.mktemp("conv_small_digits")
    cfg = TrainConfig(model="mobilenetv4_conv_small", data=str(digits), out=str(out), image_size=32, epochs=8,
                      workers=0, threads=1, progress=False, tensorboard=False)  # fmt: skip
    return train(cfg)


@pytest.mark.slow
def test_conv_small_learns_real_digits_with_the_defaults(trained_conv_small):
    """The small-data defaults (batch 32 fitted to the 1,438 images, warm-up, clipping, a zero classifier, gentle
    crops) learn: measured 38, 57, 68, 81, 86, 90, 93, 92% top-1 per epoch (2.2 CPU minutes). The previous defaults
    made 5 steps of 256 per epoch and stayed near chance (10%)."""
    from mnv4.train import list_checkpoints, load_checkpoint

    assert load_checkpoint(list_checkpoints(trained_conv_small.out)[-1])["config"]["global_batch"] == 32
    assert trained_conv_small.final["val_top1"] >= 88.0, trained_conv_small.final


@pytest.mark.slow
def test_offline_distillation_reproduces_the_teachers_crops(digits, trained_conv_small, tmp_path):
    """The paper's offline mode on real data: the trained conv_small labels 2 augmented replicas of every training
    image; a fresh student then trains on those stored labels, re-creating each crop from its seed.

    Checked: the stored labels are the teacher's view of exactly the crops the student sees (re-running the teacher
    on the re-created crops gives the stored logits), the student learns from them, and a run with other
    augmentation settings is refused. Not asserted: that the distilled student beats plain training for the same
    steps — in the short CPU runs we could afford it did not (see docs/train.md for the measured numbers)."""
    from mnv4.train.data import ImageFolderDataset, collate, train_transform
    from mnv4.train.inputs import resolve_model_defaults

    student_kw = dict(epochs=2, seed=1, ema_decay=None, label_smoothing=0.0)
    cfg = digits_config(digits, tmp_path / "kd", **student_kw)
    teacher = load_teacher(str(trained_conv_small.weights), num_classes=10)
    labels = precompute_soft_labels(teacher, digits / "train", cfg, tmp_path / "soft.safetensors", replicas=2)

    from safetensors.torch import load_file

    stored = load_file(str(labels))["logits"].float()
    resolved = resolve_model_defaults(cfg, cfg.model)  # the student's mean/std, as its run resolves them
    dataset = ImageFolderDataset(digits / "train", train_transform(32, resolved), seed=cfg.seed)
    targets = torch.tensor([label for _, label in dataset.samples])
    assert (stored.argmax(-1) == targets).float().mean() > 0.8  # a trained teacher, aligned with the images
    keys = [(1, i) for i in range(0, len(dataset), 97)]  # replica 1 = the crops of epochs 1, 3, 5, ...
    images = collate([dataset[k] for k in keys])[0]
    with torch.no_grad():
        again = teacher(images)
    assert torch.allclose(again, stored[1, [i for _, i in keys]], atol=0.05, rtol=0.01)

    distilled = train(digits_config(digits, tmp_path / "kd", soft_labels=str(labels), **student_kw))
    assert distilled.final["val_top1"] > 30.0, distilled.final  # chance is 10%

    with pytest.raises(ValueError, match="other crops .*crop_scale_min"):
        train(digits_config(digits, tmp_path / "bad", soft_labels=str(labels), crop_scale_min=0.5, **student_kw))
