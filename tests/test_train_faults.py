"""Training under faults, each a case that once gave silently wrong results or lost work: a corrupt validation
image, a kill during the write of best.pt, a kill mid-epoch (exact logs after the resume), NaN in the input or the
forward pass, killed checkpoint writes, a truncated newest checkpoint, ``--resume auto`` on an empty folder.

A "kill" here is an exception nothing catches (``Killed``, a ``BaseException``) raised at the chosen point, in
process: cheaper than SIGKILL (tests/test_train_e2e.py has the real one) and exact about where it lands."""

from __future__ import annotations

import csv
import logging
import os
import shutil

import pytest
import torch
from digits import Killed, copy_subset, model_killed_in_forward, small_config
from torch import nn

import mnv4
from mnv4.train import NonFiniteLossError, list_checkpoints, load_checkpoint, train


def read_csv(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_corrupt_validation_image_is_skipped_counted_and_not_scored(tiny_digits, tmp_path, caplog):
    """One undecodable file among 51 validation images: one log line, ``val_skipped`` 1 in epochs.csv, and top-1
    over the 50 scored - the number the evaluation protocol of ``mnv4 eval`` gives for the run's weights (validation
    follows the model's data config: bicubic, crop 0.875 at 32 px), not k/51 with the corrupt file scored as a copy
    of its neighbour."""
    data = copy_subset(tiny_digits, tmp_path / "data", {"train": 10, "val": 5})
    corrupt = data / "val" / "3" / "9999.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    cfg = small_config(data, tmp_path / "run", epochs=1, val_crop_pct=None)
    with caplog.at_level(logging.WARNING):
        result = train(cfg)
    assert sum(str(corrupt) in r.getMessage() for r in caplog.records) == 1
    row = read_csv(tmp_path / "run" / "epochs.csv")[-1]
    assert row["val_skipped"] == "1" and result.final["val_skipped"] == 1

    from mnv4 import data_config, eval_transform, load_image  # the loader and protocol of mnv4 eval

    model = mnv4.create_model("mobilenetv4_conv_small", num_classes=10, pretrained=str(result.weights)).eval()
    transform = eval_transform(data_config(model, img_size=32))
    images, labels = [], []
    for label in range(10):
        for path in sorted((data / "val" / str(label)).glob("*.png")):
            if path != corrupt:
                images.append(transform(load_image(path)))
                labels.append(label)
    with torch.no_grad():
        correct = (model(torch.stack(images)).argmax(1) == torch.tensor(labels)).sum().item()
    assert len(labels) == 50
    assert result.final["val_top1"] == pytest.approx(100 * correct / 50, abs=1e-9)


def test_kill_while_writing_best_then_resume_keeps_best_pt_and_the_record_in_agreement(tiny_digits, tmp_path,
                                                                                     monkeypatch, caplog):  # fmt: skip
    """Validation scores 50 then 60 (a new best at both epoch ends); the run is killed while the second best.pt is
    written. After ``--resume auto`` best.pt must be the model the last checkpoint records as the best (step 10,
    60), not the step-5 model under a record that says 60. Then the other order of damage - best.pt older than the
    record - is repaired on resume from the checkpoint of the best step."""
    import mnv4.train.loop as loop

    scores = iter([50.0, 60.0, 60.0, 60.0])
    monkeypatch.setattr(loop, "evaluate", lambda *a, **k: dict(top1=next(scores), top5=100.0, loss=1.0, scored=50,
                                                              skipped=0))  # fmt: skip
    replace, best_writes = os.replace, []

    def killing_replace(src, dst):
        if os.path.basename(dst) == "best.pt":
            best_writes.append(dst)
            if len(best_writes) == 2:
                raise Killed
        return replace(src, dst)

    monkeypatch.setattr(os, "replace", killing_replace)
    cfg = small_config(tiny_digits, tmp_path)
    with pytest.raises(Killed):
        train(cfg)
    monkeypatch.setattr(os, "replace", replace)
    train(small_config(tiny_digits, tmp_path, resume="auto"))
    best, last = load_checkpoint(tmp_path / "best.pt"), load_checkpoint(list_checkpoints(tmp_path)[-1])
    assert last["global_step"] == 10 and last["best_top1"] == 60.0
    assert (best["global_step"], best["best_top1"]) == (10, 60.0)

    shutil.copyfile(tmp_path / "ckpt-00000005.pt", tmp_path / "best.pt")  # best.pt: the step-5 model, record 60
    with caplog.at_level(logging.WARNING, logger="mnv4"):
        train(small_config(tiny_digits, tmp_path, resume="auto"))  # a finished run: no steps, only the repair
    best = load_checkpoint(tmp_path / "best.pt")
    assert (best["global_step"], best["best_top1"]) == (10, 60.0)
    assert any("restored it from ckpt-00000010.pt" in r.getMessage() for r in caplog.records)


def test_epoch_and_step_logs_are_exact_across_a_resume(tiny_digits, tmp_path):
    """Killed in step 5 of a 5-step epoch, resumed from the step-3 checkpoint: epochs.csv's train_loss is the mean
    over all 5 steps (not over the 2 after the resume) and steps.csv has each step once - both equal, to the bit, to
    an uninterrupted run's."""

    kw = dict(epochs=1, save_every_steps=3, log_every=1)
    train(small_config(tiny_digits, tmp_path / "full", **kw))

    cfg = small_config(tiny_digits, tmp_path / "killed", **kw)
    with pytest.raises(Killed):
        train(cfg, model=model_killed_in_forward(cfg, num_classes=10, forward=5))
    assert [int(r["step"]) for r in read_csv(tmp_path / "killed" / "steps.csv")] == [1, 2, 3, 4]
    train(small_config(tiny_digits, tmp_path / "killed", resume="auto", **kw))

    def columns(rows, *names):
        return [tuple(r[n] for n in names) for r in rows]

    for name, keys in (("steps", ("step", "epoch", "loss", "lr")), ("epochs", ("epoch", "step", "train_loss",
                                                                                "val_top1", "val_loss"))):  # fmt: skip
        full = read_csv(tmp_path / "full" / f"{name}.csv")
        resumed = read_csv(tmp_path / "killed" / f"{name}.csv")
        assert columns(resumed, *keys) == columns(full, *keys), name
    assert [int(r["step"]) for r in read_csv(tmp_path / "killed" / "steps.csv")] == [1, 2, 3, 4, 5]


def test_resume_auto_starts_fresh_cleans_killed_writes_and_skips_a_truncated_checkpoint(tiny_digits, tmp_path,
                                                                                        caplog):  # fmt: skip
    """One command starts and restarts a job: ``--resume auto`` on an empty --out starts a new run (and says so);
    temporary files of killed checkpoint writes are removed (not those of a live process or another host); a
    truncated newest checkpoint is set aside and the run resumes from the one before, naming both."""
    import socket

    out = tmp_path / "run"
    out.mkdir()
    dead_pid = 4_000_000  # above Linux's pid_max: no such process
    stale = out / f".ckpt-00000001.pt.tmp-{dead_pid}@{socket.gethostname()}"
    stale_old_style = out / f".best.pt.tmp-{dead_pid}"
    live = out / f".ckpt-00000002.pt.tmp-{os.getppid()}@{socket.gethostname()}"
    elsewhere = out / f".ckpt-00000003.pt.tmp-{dead_pid}@another-host"
    for path in (stale, stale_old_style, live, elsewhere):
        path.write_bytes(b"\0" * 1000)
    kw = dict(epochs=1, save_every_steps=1, resume="auto")
    with caplog.at_level(logging.INFO, logger="mnv4"):
        first = train(small_config(tiny_digits, out, max_steps=2, **kw))
    assert first.global_step == 2 and "starting a new run" in caplog.text
    assert not stale.exists() and not stale_old_style.exists() and live.exists() and elsewhere.exists()

    newest = list_checkpoints(out)[-1]
    assert newest.name == "ckpt-00000002.pt"
    newest.write_bytes(newest.read_bytes()[:5000])  # truncated, as by a full disk
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="mnv4"):
        again = train(small_config(tiny_digits, out, max_steps=3, **kw))
    assert again.global_step == 3
    assert "ckpt-00000002.pt" in caplog.text and "resumed from" in caplog.text and "ckpt-00000001.pt" in caplog.text
    assert (out / "ckpt-00000002.pt.unreadable").exists()
    assert [p.name for p in list_checkpoints(out)] == ["ckpt-00000001.pt", "ckpt-00000002.pt", "ckpt-00000003.pt"]
    assert load_checkpoint(out / "ckpt-00000002.pt")["global_step"] == 2  # written again by the resumed run


@pytest.mark.parametrize("where", ["input", "forward"])
def test_nan_stops_before_weights_bn_statistics_and_ema(tiny_digits, tmp_path, monkeypatch, where):
    """A NaN in an input batch (from step 6, the first of epoch 1) or inside the forward pass (after the stem, from
    the 7th training forward): the run stops with one clear error, and the model it leaves behind - weights AND the
    BatchNorm running statistics a train-mode forward updates before any loss exists - is exactly the last good
    checkpoint's; the EMA never averages a non-finite model."""
    from torch.optim.swa_utils import AveragedModel

    from mnv4.train.data import ImageFolderDataset

    model = mnv4.create_model("mobilenetv4_conv_small", num_classes=10)
    if where == "input":
        apply_transform = ImageFolderDataset.apply_transform

        def poisoned(self, image, aug_epoch, index):
            out = apply_transform(self, image, aug_epoch, index)
            return out * float("nan") if aug_epoch == 1 else out

        monkeypatch.setattr(ImageFolderDataset, "apply_transform", poisoned)
        step, last_good = 6, "ckpt-00000005.pt"
    else:
        calls = {"n": 0}

        def poison(module, inputs, output):
            if not module.training:  # validation passes do not count
                return output
            calls["n"] += 1
            return output * float("nan") if calls["n"] >= 7 else output

        model.conv_stem.register_forward_hook(poison)
        step, last_good = 7, "ckpt-00000006.pt"
    ema_saw = []
    update = AveragedModel.update_parameters

    def spy(self, averaged):
        ema_saw.append(all(torch.isfinite(v).all() for v in averaged.state_dict().values() if v.is_floating_point()))
        return update(self, averaged)

    monkeypatch.setattr(AveragedModel, "update_parameters", spy)
    cfg = small_config(tiny_digits, tmp_path, save_every_steps=3, ema_decay=0.9)
    with pytest.raises(NonFiniteLossError, match=f"at global step {step} ") as info:
        train(cfg, model=model)
    message = str(info.value)
    assert f"The last checkpoint, {tmp_path / last_good}, is intact" in message
    assert "resume with --resume auto" in message and "no checkpoint was written yet" not in message.lower()
    assert ("input batch" in message) == (where == "input")
    assert [p.name for p in list_checkpoints(tmp_path)][-1] == last_good
    saved = load_checkpoint(tmp_path / last_good)["model"]
    left = model.state_dict()
    assert all(torch.equal(left[k], saved[k]) for k in saved), [k for k in saved if not torch.equal(left[k], saved[k])]
    assert len(ema_saw) == step - 1 and all(ema_saw)


def test_device_side_nan_guard_needs_no_host_sync(tmp_path):
    """The CUDA mode of the guard, run on the CPU: nothing is read on the host per step; a NaN step restores the BN
    statistics on the device and the fused AdamW skips its update (found_inf), so after two more steps the model and
    the optimiser are still those of the last good step, and ``check`` (where the loop reads its logs) stops the run
    naming the first bad step."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    from mnv4.engine.guard import NonFiniteGuard
    from mnv4.engine.optim import Optimization

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(144, 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    optim = Optimization(optimizer, scheduler, torch.amp.GradScaler("cpu", enabled=False), [], grad_clip=1.0)
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    guard = NonFiniteGuard(model, torch.device("cpu"), tmp_path, distributed=False, eager=False)
    good = None
    for step in range(5):
        guard.begin_step(step, 0)
        images = torch.randn(8, 3, 8, 8)
        if step == 2:
            images[3, 1, 4, 4] = float("nan")
            good = {k: v.clone() for k, v in model.state_dict().items()}
            good_step = optimizer.state[model[0].weight]["step"].clone()
        guard.observe("input", images)
        loss = nn.functional.cross_entropy(model(images), torch.randint(0, 2, (8,)))
        guard.observe("loss", loss)
        loss.backward()
        optim.step(model, guard)
        ema.update_parameters(model)
    now = model.state_dict()
    assert all(torch.equal(now[k], good[k]) for k in good)
    assert torch.equal(optimizer.state[model[0].weight]["step"], good_step)
    assert all(torch.isfinite(v).all() for v in ema.state_dict().values() if v.is_floating_point())
    with pytest.raises(NonFiniteLossError, match="an input batch has NaN/inf values at global step 3 .*No checkpoint"):
        guard.check()
