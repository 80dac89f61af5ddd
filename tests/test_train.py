"""Training: recipes, optimiser groups, schedule, checkpoints, NaN handling, CLI. The end-to-end acceptance runs
(accuracy on real digits, SIGKILL + exact resume, torchrun DDP, distillation) are in test_train_e2e.py."""

from __future__ import annotations

import math

import pytest
import torch
from digits import small_config
from torch import nn

import mnv4
from mnv4.engine.checkpoint import atomic_save, list_checkpoints, load_checkpoint, rng_state, set_rng_state
from mnv4.errors import UserError
from mnv4.train import (
    TrainConfig,
    WarmupCosine,
    list_recipes,
    load_config,
    load_recipe,
    param_groups,
    train,
)
from mnv4.train.distill import kd_loss
from mnv4.train.loop import apply_recipe_to_model

PAPER_MODELS = [
    "mobilenetv4_conv_small",
    "mobilenetv4_conv_medium",
    "mobilenetv4_conv_large",
    "mobilenetv4_hybrid_medium",
    "mobilenetv4_hybrid_large",
]


def test_every_paper_model_has_a_recipe_with_tab10_values():
    names = list_recipes()
    assert set(PAPER_MODELS) <= set(names) and "finetune" in names
    # spot checks against paper App. C Tab. 10 and the TF configs (docs/design.md §6)
    expected = {
        "mobilenetv4_conv_small": dict(
            image_size=224,
            global_batch=4096,
            lr=0.002,
            beta1=0.6,
            adam_eps=1e-6,
            weight_decay=0.01,
            l2=1e-5,
            dropout=0.3,
            drop_path=0.0,
            ema_decay=0.9999,
            bn_eps=1e-6,
            bn_momentum=0.05,
            randaug_prob=0.5,
            randaug_magnitude=9,
            epochs=9600,
            warmup_epochs=5,
        ),
        "mobilenetv4_conv_medium": dict(lr=0.004, drop_path=0.075, bn_momentum=0.003, bn_eps=1e-3, randaug_prob=0.7),
        "mobilenetv4_hybrid_medium": dict(global_batch=16384, lr=0.016, warmup_epochs=20, weight_decay=0.1),
        "mobilenetv4_conv_large": dict(image_size=384, drop_path=0.35, mixup_prob=0.3, weight_decay=0.2),
        "mobilenetv4_hybrid_large": dict(lr=0.01, min_lr_fraction=0.001, mixup_prob=0.3, mixup_alpha=0.8),
    }
    for name in PAPER_MODELS:
        cfg = load_config(name)
        assert cfg.model == name and cfg.label_smoothing == 0.1 and cfg.randaug_layers == 2
        for key, value in expected[name].items():
            assert getattr(cfg, key) == pytest.approx(value), (name, key)
    # the disagreements are written down next to the values
    from importlib import resources

    text = (resources.files("mnv4") / "recipes" / "mobilenetv4_conv_large.toml").read_text()
    assert "0.2 flat" in text and "0.2" in text.split("mixup_prob")[1].splitlines()[0]
    assert "83.7" in (resources.files("mnv4") / "recipes" / "mobilenetv4_hybrid_large.toml").read_text()


def test_recipe_errors_and_overrides(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("lr = 0.1\nlearning_rate = 3\n")
    with pytest.raises(ValueError, match="unknown keys \\['learning_rate'\\]"):
        load_recipe(str(bad))
    with pytest.raises(ValueError, match="unknown recipe 'conv_smal'"):
        load_recipe("conv_smal")
    with pytest.raises(UserError, match="does not exist"):
        load_recipe(str(tmp_path / "missing.toml"))
    cfg = load_config("mobilenetv4_conv_small", lr=0.01, epochs=None)
    assert cfg.lr == 0.01 and cfg.epochs == 9600  # None overrides keep the recipe's value
    with pytest.raises(ValueError, match="precision must be one of"):
        TrainConfig(precision="fp8")
    with pytest.raises(ValueError, match="mixup_prob must be in"):
        TrainConfig(mixup_prob=2)


def test_param_groups_no_decay_on_bn_bias_layer_scale():
    model = mnv4.create_model("mobilenetv4_hybrid_medium", num_classes=10)
    groups = param_groups(model, weight_decay=0.1, lr=1.0, body_lr_scale=0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = [names[id(p)] for g in groups if g["weight_decay"] > 0 for p in g["params"]]
    not_decayed = [names[id(p)] for g in groups if g["weight_decay"] == 0 for p in g["params"]]
    assert len(decayed) + len(not_decayed) == len(names)
    assert any(n.endswith("layer_scale.gamma") for n in not_decayed)
    assert any(".bn." in n or n.startswith("bn1") for n in not_decayed) and "classifier.bias" in not_decayed
    assert all(not n.endswith((".gamma", ".bias")) and ".bn" not in n for n in decayed)
    assert "classifier.weight" in decayed and "conv_stem.weight" in decayed
    lrs = {names[id(p)]: g["lr"] for g in groups for p in g["params"]}
    assert lrs["classifier.weight"] == 1.0 and lrs["conv_stem.weight"] == pytest.approx(0.1)


def test_warmup_cosine_schedule():
    f = WarmupCosine(warmup=10, total=110, alpha=0.001)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.001 + 0.999 * 0.5)
    assert f(110) == pytest.approx(0.001) and f(500) == pytest.approx(0.001)
    assert all(f(s) >= f(s + 1) for s in range(10, 120))


def test_recipe_bn_and_flat_drop_path_are_applied():
    from torchvision.ops import StochasticDepth

    cfg = load_config("mobilenetv4_conv_small")
    model = mnv4.create_model("mobilenetv4_conv_small")
    apply_recipe_to_model(model, cfg)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(m.eps == 1e-6 and m.momentum == 0.05 for m in bns)
    flat = TrainConfig(drop_path=0.2, drop_path_schedule="flat")
    model = mnv4.create_model("mobilenetv4_conv_large", drop_path_rate=0.2)
    apply_recipe_to_model(model, flat)
    rates = [m.drop_path.p for m in model.modules() if getattr(m, "has_skip", False)]
    assert rates and all(r == 0.2 for r in rates)
    assert all(isinstance(m.drop_path, StochasticDepth) for m in model.modules() if getattr(m, "has_skip", False))


def test_checkpoint_roundtrip_is_weights_only(tmp_path):
    import random

    import numpy as np

    torch.manual_seed(3)
    random.seed(4)
    np.random.seed(5)
    state = {"model": nn.Linear(3, 2).state_dict(), "rng": rng_state(), "epoch": 2, "history": [{"a": 1.0}]}
    path = atomic_save(state, tmp_path / "ckpt-00000007.pt")
    expected = (torch.rand(2), random.random(), np.random.rand())
    loaded = load_checkpoint(path)  # torch.load(weights_only=True) inside
    set_rng_state(loaded["rng"])
    assert torch.equal(torch.rand(2), expected[0]) and random.random() == expected[1]
    assert np.random.rand() == expected[2]
    assert list_checkpoints(tmp_path) == [path] and not list(tmp_path.glob(".*tmp*"))
    (tmp_path / "ckpt-00000009.pt").write_bytes(b"garbage")
    with pytest.raises(UserError, match="cannot read checkpoint"):
        load_checkpoint(tmp_path / "ckpt-00000009.pt")


def test_kd_loss():
    logits = torch.randn(4, 10)
    assert kd_loss(logits, logits, 4.0).abs() < 1e-6
    student = torch.zeros(4, 10, requires_grad=True)
    loss = kd_loss(student, logits, 2.0)
    loss.backward()
    # d/ds of T^2 KL(softmax(t/T) || softmax(s/T)) = T * (softmax(s/T) - softmax(t/T)) / batch
    expected = 2.0 * (torch.softmax(student.detach() / 2, -1) - torch.softmax(logits / 2, -1)) / 4
    assert torch.allclose(student.grad, expected, atol=1e-6)


def test_small_data_defaults_fit_the_run(all_digits, tmp_path, caplog):
    """Without a recipe, on 1,438 images: a global batch of 32 (44 steps per epoch, not 5 of 256), a warm-up,
    gradient clipping and a zero classifier, all printed before the first step; validation at the model's protocol.
    A batch or recipe that does not fit the data says which flag does."""
    import logging

    from mnv4.train import RunPlan, build_model, fit_to_data
    from mnv4.train.plan import fitted_global_batch

    assert [fitted_global_batch(n) for n in (1_281_167, 10_000, 1438, 1200, 100, 5)] == [256, 256, 32, 32, 8, 4]
    assert fitted_global_batch(1438, world_size=3) == 30
    cfg = TrainConfig(model="mobilenetv4_conv_small", data=str(all_digits), out=str(tmp_path), image_size=32,
                      max_steps=1, workers=0, threads=1, progress=False, tensorboard=False)  # fmt: skip
    with caplog.at_level(logging.INFO, logger="mnv4"):
        train(cfg)
    first_lines = caplog.text.split("epoch 0:")[0]
    for expected in ("global batch 32 (44 steps per epoch", "warm-up 1 epochs", "grad clip 1", "crop_pct 0.875",
                     "bicubic"):  # fmt: skip
        assert expected in first_lines, expected
    stored = load_checkpoint(list_checkpoints(tmp_path)[-1])
    assert stored["config"]["global_batch"] == 32 and stored["config"]["grad_clip"] == 1.0
    assert stored["config"]["warmup_epochs"] == 1.0 and stored["config"]["val_crop_pct"] == 0.875

    head = build_model(cfg, num_classes=10).classifier
    assert not head.weight.any() and not head.bias.any()  # logits start at 0: loss ln(10), not ~8

    fitted, _ = fit_to_data(TrainConfig(epochs=5), 1438)
    assert (fitted.global_batch, fitted.warmup_epochs) == (32, 0.5)
    too_few = RunPlan.build(TrainConfig(epochs=5, global_batch=256, warmup_epochs=0), 1438, 1).too_short()
    assert "only 25 optimiser steps" in too_few and "--global-batch 32" in too_few
    assert RunPlan.build(fitted, 1438, 1).too_short() is None
    with pytest.raises(UserError, match="exceeds the 1438 training images: pass --global-batch 32"):
        RunPlan.build(fit_to_data(load_config("mobilenetv4_conv_small"), 1438)[0], 1438, 1)


def test_engine_defaults_fit_the_device(monkeypatch):
    """Unset precision / channels_last / compile: the throughput settings on CUDA (bf16, or fp32 on a GPU without
    bf16), fp32 eager NCHW on the CPU; whatever the user set stays as set."""
    from mnv4.train import fit_to_device

    cpu, _ = fit_to_device(TrainConfig(), torch.device("cpu"))
    assert (cpu.precision, cpu.channels_last, cpu.compile) == ("fp32", False, False)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    gpu, notes = fit_to_device(TrainConfig(), torch.device("cuda"))
    assert (gpu.precision, gpu.channels_last, gpu.compile) == ("bf16", True, True)
    assert "precision bf16" in notes[0] and "--compile" in notes[0]
    user = TrainConfig(precision="fp16", channels_last=False, compile=False)
    chosen, notes = fit_to_device(user, torch.device("cuda"))
    assert (chosen.precision, chosen.channels_last, chosen.compile, notes) == ("fp16", False, False, [])
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert fit_to_device(TrainConfig(), torch.device("cuda"))[0].precision == "fp32"


def test_short_run_writes_logs_checkpoints_and_weights(tiny_digits, tmp_path):
    from safetensors import safe_open

    cfg = small_config(tiny_digits, tmp_path, ema_decay=0.9, keep_last=2, mixup_prob=0.5, randaug_layers=1)
    result = train(cfg)
    assert result.global_step == 10 and result.epochs_done == 2 and len(result.history) == 2
    assert {"val_top1", "ema_top1", "train_loss"} <= set(result.final)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt-00000005.pt", "ckpt-00000010.pt"]
    assert (tmp_path / "best.pt").exists() and (tmp_path / "epochs.csv").read_text().count("\n") == 3
    with safe_open(str(tmp_path / "model.safetensors"), framework="pt") as f:
        assert f.metadata()["model"] == "mobilenetv4_conv_small"
    assert (tmp_path / "model_ema.safetensors").exists()
    # a finished run resumed asks for nothing more and keeps its weights
    again = train(small_config(tiny_digits, tmp_path, ema_decay=0.9, resume="auto"))
    assert again.global_step == 10


def test_cli_errors_are_one_line(tmp_path, capsys):
    from mnv4.cli import main

    assert main(["train", "--list-recipes"]) == 0
    assert "mobilenetv4_hybrid_large" in capsys.readouterr().out
    assert main(["train", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mnv4 train: error:") and "train/<class>" in err and err.count("\n") == 1
    assert main(["train", "--data", str(tmp_path), "--set", "nonsense=1"]) == 2
    assert "TrainConfig field" in capsys.readouterr().err


def test_global_batch_must_split_into_accumulation(tiny_digits, tmp_path):
    with pytest.raises(ValueError, match="global batch 20 must be batch_size 3"):
        train(small_config(tiny_digits, tmp_path, batch_size=3))
    with pytest.raises(ValueError, match="exceeds the 100 training images"):
        train(small_config(tiny_digits, tmp_path, global_batch=128))


def test_finetune_from_a_weights_file(tiny_digits, tmp_path):
    """The fine-tune preset: backbone from a safetensors file (here a 1000-class model), a new 10-class head."""
    from safetensors.torch import save_file

    from mnv4.train import build_model

    source = mnv4.create_model("mobilenetv4_conv_small")
    weights = tmp_path / "backbone.safetensors"
    save_file(source.state_dict(), str(weights))
    cfg = load_config(
        "finetune", model="mobilenetv4_conv_small", pretrained=str(weights), data=str(tiny_digits),
        out=str(tmp_path / "ft"), image_size=32, global_batch=20, epochs=1, workers=0, threads=1, progress=False,
        tensorboard=False, val_crop_pct=1.0,
    )  # fmt: skip
    assert cfg.lr == 5e-4 and cfg.backbone_lr_scale == 0.1 and cfg.mixup_prob == 0
    model = build_model(cfg, num_classes=10)
    assert torch.equal(model.conv_stem.weight, source.conv_stem.weight)
    assert model.classifier.weight.shape == (10, 1280)
    result = train(cfg)
    assert result.global_step == 5 and math.isfinite(result.final["train_loss"])


def test_csv_log_gains_columns_without_losing_rows(tmp_path):
    import csv

    from mnv4.train import MetricLog

    log = MetricLog(tmp_path, enabled=True, tensorboard=False)
    log.write("epochs", {"epoch": 0, "val_top1": 50.0}, 0)
    log.write("epochs", {"epoch": 1, "val_top1": 60.0, "ema_top1": 55.0}, 1)  # the EMA starts later
    log.write("epochs", {"epoch": 2, "val_top1": 70.0, "ema_top1": 65.0}, 2)
    rows = list(csv.DictReader(open(tmp_path / "epochs.csv")))
    assert [r["ema_top1"] for r in rows] == ["", "55.0", "65.0"] and rows[0]["val_top1"] == "50.0"


def test_online_distillation_from_files(tiny_digits, tmp_path):
    """--teacher with our .safetensors export (architecture in its metadata) and with a .pt checkpoint."""
    teacher_run = train(small_config(tiny_digits, tmp_path / "teacher", epochs=1))
    for teacher in (teacher_run.weights, tmp_path / "teacher" / "best.pt"):
        out = tmp_path / f"student_{teacher.suffix[1:]}"
        cfg = small_config(tiny_digits, out, epochs=1, teacher=str(teacher), kd_alpha=0.5, kd_temperature=2.0)
        result = train(cfg)
        assert result.global_step == 5 and math.isfinite(result.final["train_loss"])
    with pytest.raises(ValueError, match="predicts 10 classes but the data has 3"):
        from mnv4.train import load_teacher

        load_teacher(str(teacher_run.weights), num_classes=3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (nvJPEG decode, bf16, fused AdamW)")
def test_gpu_pipeline_and_precision_on_cuda(tiny_digits, tmp_path):
    from PIL import Image

    jpeg_root = tmp_path / "jpeg"
    for path in tiny_digits.rglob("*.png"):  # nvJPEG reads JPEGs: convert the digits
        target = jpeg_root / path.relative_to(tiny_digits).with_suffix(".jpg")
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.open(path).save(target, quality=95)
    cfg = small_config(
        jpeg_root, tmp_path / "out", device="cuda", data_pipeline="gpu", precision="bf16", channels_last=True,
        deterministic=False, workers=2, randaug_layers=1, ema_decay=0.9,
    )  # fmt: skip
    result = train(cfg)
    assert result.global_step == 10 and math.isfinite(result.final["train_loss"])
