"""Pretrained weights: the tag registry, the hub path (a local hub-cache layout, offline), local files, timm train.py
checkpoints, head replacement, and one clear error for every bad file. Never touches the network."""

import logging
import os
import pickle
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import mnv4
from mnv4 import weights
from mnv4.specs import EXTRA_MODELS, PAPER_MODELS
from mnv4.weights import PRETRAINED, TAGS, list_pretrained

SMALL = "mobilenetv4_conv_small"
SMALL_TAG = "mobilenetv4_conv_small.e2400_r224_in1k"


def write_hub_cache(cache: Path, tag: str, state_dict: dict, revision: str = "0123456789abcdef") -> Path:
    """The layout huggingface_hub keeps: models--timm--<tag>/{refs/main, snapshots/<rev>/model.safetensors}."""
    repo = cache / f"models--timm--{tag}"
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    save_file({k: v.contiguous() for k, v in state_dict.items()}, str(snapshot / "model.safetensors"))
    return snapshot / "model.safetensors"


def same_weights(a: dict, b: dict, skip=()) -> bool:
    keys = [k for k in a if not k.startswith(skip)] if skip else list(a)
    return all(torch.equal(a[k], b[k]) for k in keys)


@pytest.fixture(scope="module")
def small_sd():
    torch.manual_seed(0)
    model = mnv4.create_model(SMALL)
    with torch.no_grad():  # distinct BN statistics, so a load that skipped them would be noticed
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    return model.state_dict()


@pytest.fixture
def offline(monkeypatch, tmp_path):
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.delenv("HF_HOME", raising=False)
    return cache


# ------------------------------------------------------------------------------------------------ registry
def test_registry_lists_the_24_released_tags():
    released = list_pretrained()
    assert len(released) == 24 and len(set(released)) == 24
    assert all(PRETRAINED[t].hf_hub_id == f"timm/{t}" for t in released)
    assert len(list_pretrained(include_untrained=True)) == 28
    assert {t.name for t in TAGS if t.num_classes == 11821} == {
        "mobilenetv4_conv_medium.e180_r384_in12k", "mobilenetv4_conv_medium.e180_ad_r384_in12k",
        "mobilenetv4_conv_medium.e250_r384_in12k", "mobilenetv4_hybrid_medium.e200_r256_in12k",
        "mobilenetv4_conv_aa_large.e230_r384_in12k",
    }
    assert list_pretrained("*hybrid_large*") == [
        "mobilenetv4_hybrid_large.ix_e600_r384_in1k", "mobilenetv4_hybrid_large.e600_r384_in1k"]
    assert {t.arch for t in TAGS} == {spec.name for spec in PAPER_MODELS + EXTRA_MODELS}  # not TF's ConvMediumSeg
    # published top-1 (timm results-imagenet.csv): higher at the larger test resolution for every tag with both
    for t in TAGS:
        if t.top1 is not None and t.test_top1 is not None:
            assert 60 < t.top1 < t.test_top1 < 86, t.name
    assert PRETRAINED["mobilenetv4_hybrid_large.e600_r384_in1k"].test_top1 == 84.264


# pretrained_cfg fields timm does not have: the published accuracy, and where the weights came from.
OWN_CFG_FIELDS = ("top1", "top5", "test_top1", "test_top5", "weights")


def test_every_pretrained_cfg_field_equals_timms(timm):
    from timm.models import get_pretrained_cfg

    for t in TAGS:
        ref = {k: tuple(v) if isinstance(v, list) else v for k, v in get_pretrained_cfg(t.name).to_dict().items()}
        cfg = mnv4.create_model(t.name).pretrained_cfg if t.arch == SMALL else t.to_cfg()
        # timm leaves out what a tag does not have (test size, hub id of an untrained cfg); we keep it as None
        ours = {k: v for k, v in cfg.items() if k not in OWN_CFG_FIELDS and v is not None}
        assert ours == ref, t.name
    # the default tag of a bare name is timm's (first listed)
    for arch in {t.arch for t in TAGS}:
        assert weights.default_tag(arch).tag == timm.create_model(arch, pretrained=False).pretrained_cfg["tag"]


def test_untrained_model_carries_the_default_tag_config():
    model = mnv4.create_model("mobilenetv4_conv_medium")
    cfg = model.pretrained_cfg
    assert cfg["tag"] == "e500_r256_in1k" and cfg["input_size"] == (3, 256, 256) and cfg["weights"] is None
    tagged = mnv4.create_model("mobilenetv4_conv_small.e3600_r256_in1k")
    assert tagged.pretrained_cfg["mean"] == (0.5, 0.5, 0.5) and tagged.pretrained_cfg["test_input_size"][1] == 320


def test_unknown_tag_names_the_closest():
    with pytest.raises(ValueError, match=r"unknown pretrained tag.*mobilenetv4_conv_small\.e2400_r224_in1k"):
        mnv4.create_model("mobilenetv4_conv_small.e2400_r224", pretrained=True)
    with pytest.raises(ValueError, match="unknown model 'mobilenetv4_conv_smal'"):
        mnv4.create_model("mobilenetv4_conv_smal.e2400_r224_in1k")
    with pytest.raises(ValueError, match="no released weights.*pretrained='path"):
        mnv4.create_model("mobilenetv4_hybrid_medium_075", pretrained=True)


def test_positional_num_classes_is_refused():
    with pytest.raises(ValueError, match="pass num_classes by keyword"):
        mnv4.create_model(SMALL, 10)


# ------------------------------------------------------------------------------------------------ hub path
def test_hub_path_loads_from_the_cache_offline(offline, small_sd):
    write_hub_cache(offline, SMALL_TAG, small_sd)
    model = mnv4.create_model(SMALL, pretrained=True)  # bare name -> default tag
    assert same_weights(model.state_dict(), small_sd)
    assert model.pretrained_cfg["tag"] == "e2400_r224_in1k" and SMALL_TAG in model.pretrained_cfg["weights"]
    tagged = mnv4.create_model(SMALL_TAG, pretrained=True)
    assert same_weights(tagged.state_dict(), small_sd)


def test_hub_path_honours_hf_home(monkeypatch, tmp_path, small_sd):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    write_hub_cache(tmp_path / "hf" / "hub", SMALL_TAG, small_sd)
    assert same_weights(mnv4.create_model(SMALL_TAG, pretrained=True).state_dict(), small_sd)


def test_offline_with_nothing_cached_says_how_to_fetch(offline):
    with pytest.raises(FileNotFoundError) as info:
        mnv4.create_model("mobilenetv4_conv_large.e600_r384_in1k", pretrained=True)
    msg = str(info.value)
    assert "HF_HUB_OFFLINE" in msg and str(offline) in msg
    assert "hf download timm/mobilenetv4_conv_large.e600_r384_in1k model.safetensors" in msg
    assert "hf_hub_download('timm/mobilenetv4_conv_large.e600_r384_in1k', 'model.safetensors')" in msg
    assert "pretrained='path/to/model.safetensors'" in msg


def _unreachable_hub(tmp_path: Path) -> dict[str, str]:
    """The environment of a process with no hub to reach: ``HF_ENDPOINT`` at a local port nothing listens on (each
    connection is refused at once), no proxies, no HF_HUB_OFFLINE, an empty hub cache of its own."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # free again once closed: nothing listens there
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_") and not k.lower().endswith("_proxy")}
    src = str(Path(mnv4.__file__).resolve().parents[1])
    env.update(HF_ENDPOINT=f"http://127.0.0.1:{port}", HF_HUB_CACHE=str(tmp_path / "hub"),
               PYTHONPATH=os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")])))
    return env


def test_no_network_fails_at_once_with_one_line(tmp_path):
    """Without HF_HUB_OFFLINE and with no hub to reach, huggingface_hub would retry with back-off (~30 s) and log
    each retry; one request tells that the hub cannot be reached, so the error comes at once and alone."""
    out = tmp_path / "m.onnx"
    run = subprocess.run([sys.executable, "-m", "mnv4", "export", SMALL_TAG, "--format", "onnx", "--out", str(out)],
                         env=_unreachable_hub(tmp_path), capture_output=True, text=True, timeout=300)
    assert run.returncode == 2, run.stderr
    (line,) = run.stderr.strip().splitlines()  # exactly one line: no retry messages before it
    assert line.startswith("mnv4 export: error: weights for " + SMALL_TAG)
    assert "the hub could not be reached (" in line and f"hf download timm/{SMALL_TAG}" in line
    assert not out.exists()


def test_no_network_still_loads_from_the_cache(tmp_path, small_sd):
    env = _unreachable_hub(tmp_path)
    cached = write_hub_cache(Path(env["HF_HUB_CACHE"]), SMALL_TAG, small_sd)
    code = f"import mnv4; print(mnv4.create_model({SMALL_TAG!r}, pretrained=True).pretrained_cfg['weights'])"
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert str(cached) in run.stdout and "Retry" not in run.stderr


def test_12k_head_into_a_1000_class_model(offline, caplog):
    tag = "mobilenetv4_hybrid_medium.e200_r256_in12k"
    src = mnv4.create_model(tag)
    assert src.num_classes == 11821  # num_classes=None -> the tag's
    write_hub_cache(offline, tag, src.state_dict())
    with caplog.at_level(logging.INFO, logger="mnv4"):
        model = mnv4.create_model(tag, pretrained=True, num_classes=1000)
    messages = [r.getMessage() for r in caplog.records if r.name == "mnv4"]
    assert len(messages) == 1 and "11821-class classifier" in messages[0] and "num_classes=1000" in messages[0]
    assert model.classifier.out_features == 1000
    assert same_weights(model.state_dict(), src.state_dict(), skip=("classifier.",))
    full = mnv4.create_model(tag, pretrained=True)
    assert full.num_classes == 11821 and torch.equal(full.classifier.weight, src.classifier.weight)


# ------------------------------------------------------------------------------------------------ local files
def test_local_safetensors_and_weights_only_pth(tmp_path, small_sd, caplog):
    st, pth = tmp_path / "w.safetensors", tmp_path / "w.pth"
    save_file(small_sd, str(st))
    torch.save(small_sd, pth)
    for path in (st, str(pth)):
        model = mnv4.create_model(SMALL, pretrained=path)
        assert same_weights(model.state_dict(), small_sd) and model.pretrained_cfg["weights"] == str(path)
    with caplog.at_level(logging.INFO, logger="mnv4"):
        ft = mnv4.create_model(SMALL, pretrained=st, num_classes=10)
    assert ft.num_classes == 10 and same_weights(ft.state_dict(), small_sd, skip=("classifier.",))
    assert sum("1000-class classifier" in r.getMessage() for r in caplog.records) == 1
    feats = mnv4.create_model(SMALL, pretrained=st, features_only=True)  # head keys dropped
    assert same_weights(feats.state_dict(), small_sd)


def test_timm_train_checkpoint_layout(tmp_path, small_sd):
    ema = {k: (v + 1 if v.is_floating_point() else v) for k, v in small_sd.items()}
    ckpt = {
        "epoch": 3, "arch": SMALL, "version": 2,
        "state_dict": {f"module.{k}": v for k, v in small_sd.items()},  # DDP prefix
        "state_dict_ema": ema, "optimizer": {"state": {}, "param_groups": []},
    }
    path = tmp_path / "checkpoint-3.pth.tar"
    torch.save(ckpt, path)
    assert same_weights(mnv4.create_model(SMALL, pretrained=path).state_dict(), ema)  # EMA first, as timm
    assert same_weights(mnv4.create_model(SMALL, pretrained=path, use_ema=False).state_dict(), small_sd)


def test_in_chans_1_adapts_the_stem(tmp_path, small_sd):
    path = tmp_path / "w.safetensors"
    save_file(small_sd, str(path))
    rgb = mnv4.create_model(SMALL, pretrained=path).eval()
    grey = mnv4.create_model(SMALL, pretrained=path, in_chans=1).eval()
    x = torch.randn(2, 1, 64, 64)
    torch.testing.assert_close(grey(x), rgb(x.expand(-1, 3, -1, -1)), rtol=1e-4, atol=1e-5)


class _WritesMarker:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_pickle_that_runs_code_is_refused(tmp_path):
    marker = tmp_path / "code_ran"
    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": {"conv_stem.weight": torch.zeros(1)}, "payload": _WritesMarker(marker)}, evil)
    raw = tmp_path / "evil.bin"
    raw.write_bytes(pickle.dumps(_WritesMarker(marker)))
    for path in (evil, raw):
        with pytest.raises(ValueError, match=r"refused to load .*evil.*weights_only=True"):
            mnv4.create_model(SMALL, pretrained=path)
    assert not marker.exists()


def test_truncated_or_corrupt_safetensors(tmp_path, small_sd):
    good = tmp_path / "good.safetensors"
    save_file(small_sd, str(good))
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"this is not a weights file at all")
    for bad in (cut, junk):
        with pytest.raises(ValueError, match=rf"{bad.name}: not a readable safetensors file.*truncated or corrupt"):
            mnv4.create_model(SMALL, pretrained=bad)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        mnv4.create_model(SMALL, pretrained=tmp_path / "missing.safetensors")


def test_checkpoint_of_another_architecture(tmp_path):
    half = tmp_path / "half.safetensors"
    save_file(mnv4.create_model("mobilenetv4_conv_small_050").state_dict(), str(half))
    with pytest.raises(ValueError) as info:
        mnv4.create_model(SMALL, pretrained=half)
    msg = str(info.value)
    assert "does not fit mobilenetv4_conv_small" in msg and "shape mismatch" in msg and "blocks." in msg
    assert "looks like a mobilenetv4_conv_small_050 checkpoint" in msg

    from torchvision.models import resnet18

    other = tmp_path / "resnet18.safetensors"
    save_file(resnet18().state_dict(), str(other))
    with pytest.raises(ValueError, match=r"missing: conv_stem.weight.*unexpected: conv1.weight.*not look like any"):
        mnv4.create_model(SMALL, pretrained=other)
