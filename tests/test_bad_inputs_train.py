"""``mnv4 train`` / ``python -m mnv4.train`` with bad input: each case is one clear line on stderr
(``<prog>: error: ...`` naming what was wrong and what to do), exit code 2, no traceback, and nothing trained.
Everything else - a bug, CUDA out of memory - keeps its traceback."""

from __future__ import annotations

import pytest
import torch

from mnv4.cli import main as mnv4_main
from mnv4.cli.train import main as train_main


def run(entry: str, args: list[str], capsys) -> tuple[int, str]:
    code = mnv4_main(["train", *args]) if entry == "mnv4" else train_main(args)
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_digits):
    """Bad files of every kind a training command reads."""
    root = tmp_path_factory.mktemp("bad_train_inputs")
    (root / "bad.toml").write_text("lr = [\n")
    (root / "garbage.pt").write_bytes(b"PK\x03\x04 not a checkpoint at all")
    (root / "garbage.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    foreign = {"model": {}, "data_order": {"seed": 5, "global_batch": 20, "num_samples": 100},
               "config": {"model": "mobilenetv4_conv_small"}}  # fmt: skip
    torch.save(foreign, root / "other_seed.pt")
    (root / "used_out").mkdir()
    (root / "used_out" / "ckpt-00000005.pt").write_bytes(b"a run's checkpoint")
    mismatch = root / "mismatch"  # val/ has a class train/ does not
    for split, labels in (("train", "01"), ("val", "012")):
        for label in labels:
            (mismatch / split / label).mkdir(parents=True)
            (mismatch / split / label / "a.png").write_bytes((tiny_digits / "train" / "0").glob("*.png").__next__()
                                                             .read_bytes())  # fmt: skip
    return root


def digits_args(tiny_digits, tmp_path, *extra: str) -> list[str]:
    return ["--data", str(tiny_digits), "--out", str(tmp_path / "run"), "--image-size", "32", "--workers", "0",
            "--no-progress", "--no-tensorboard", *extra]  # fmt: skip


CASES = {
    # id: (args after the data/out flags or None for a full command line, expected words)
    "no data flag": (["--out", "OUT"], "--data DIR is required"),
    "data missing": (["--data", "NOWHERE", "--out", "OUT"], "train/<class>"),
    "unknown --set field": ("DIGITS --set nonsense=1", "TrainConfig field"),
    "wrong --set type": ("DIGITS --set lr=abc", "lr must be float"),
    "bad precision": ("DIGITS --precision fp8", "precision must be one of"),
    "bad device": ("DIGITS --device gpu", "device must be"),
    "unavailable device": ("DIGITS --device cuda:99", "cuda:99"),
    "unknown recipe": ("DIGITS --recipe conv_smal", "unknown recipe 'conv_smal'"),
    "missing recipe file": ("DIGITS --recipe FILES/none.toml", "does not exist"),
    "invalid recipe": ("DIGITS --recipe FILES/bad.toml", "not valid TOML"),
    "image too small": ("DIGITS --image-size 16", "image_size must be >= 32"),
    "negative grad clip": ("DIGITS --grad-clip -1", "grad_clip must be >= 0"),
    "zero std": ("DIGITS --set std=[0.2,0.0,0.2]", "std values must be > 0"),
    "batch over the data": ("DIGITS --global-batch 1000", "pass --global-batch 8"),
    "batch does not split": ("DIGITS --global-batch 20 --batch-size 3", "must be batch_size 3"),
    "recipe batch over the data": ("DIGITS --recipe mobilenetv4_conv_small", "exceeds the 100 training images"),
    "missing checkpoint": ("DIGITS --resume FILES/none.pt", "does not exist"),
    "unreadable checkpoint": ("DIGITS --resume FILES/garbage.pt", "cannot read checkpoint"),
    "checkpoint of another run": ("DIGITS --global-batch 20 --resume FILES/other_seed.pt", "written with seed 5"),
    "missing teacher": ("DIGITS --teacher FILES/none.safetensors", "does not exist"),
    "unreadable teacher": ("DIGITS --teacher FILES/garbage.safetensors", "cannot read teacher file"),
    "soft labels with mixup": ("DIGITS --soft-labels FILES/none.safetensors --mixup-prob 0.5", "--mixup-prob 0"),
    "missing soft labels": ("DIGITS --soft-labels FILES/none.safetensors", "does not exist"),
    "precompute without teacher": ("DIGITS --precompute-soft-labels FILES/x.safetensors", "needs --teacher"),
    "val classes differ": ("--data FILES/mismatch --out OUT --workers 0", "differ from train/ classes"),
    "new run over an old one": ("DIGITS --out FILES/used_out", "pass --resume auto to continue"),
}


@pytest.mark.parametrize("entry", ["mnv4", "python -m mnv4.train"])
@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_and_exit_code_2(case, entry, files, tiny_digits, tmp_path, capsys):
    args, expected = CASES[case]
    if isinstance(args, str):
        words = args.replace("FILES", str(files)).split()
        args = digits_args(tiny_digits, tmp_path, *words[1:]) if words[0] == "DIGITS" else words
    args = [a.replace("NOWHERE", str(tmp_path / "nowhere")).replace("OUT", str(tmp_path / "out")) for a in args]
    code, err = run(entry, args, capsys)
    prefix = "mnv4 train: error: " if entry == "mnv4" else "mnv4.train: error: "
    assert code == 2, err
    assert err.startswith(prefix) and err.count("\n") == 1 and "Traceback" not in err, err
    assert expected in err, err
    assert not (tmp_path / "run" / "model.safetensors").exists() and not list(tmp_path.glob("run/ckpt-*.pt"))


def test_other_errors_keep_their_traceback(monkeypatch, tiny_digits, tmp_path):
    """A RuntimeError inside training (what CUDA out of memory or a bug raises) is not bad input: it propagates
    with its traceback instead of being printed as one line."""
    import mnv4.train

    def out_of_memory(cfg):
        raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(mnv4.train, "train", out_of_memory)
    with pytest.raises(RuntimeError, match="out of memory"):
        train_main(digits_args(tiny_digits, tmp_path))
