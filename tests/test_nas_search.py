"""The search end to end on real data (scikit-learn's digits at 32 px, the tiny space): outputs, bad input, exact
resume, torchrun with two processes, and (slow) a coarse + fine search whose result trains with `mnv4 train` and
exports to ONNX while its cost meets the target."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import mnv4.specs
from mnv4.cli import main as cli_main
from mnv4.engine.checkpoint import list_checkpoints, load_checkpoint
from mnv4.errors import UserError
from mnv4.nas import SPACES, SearchConfig, search, spec_as_python
from mnv4.nas.cost import roofline_cost
from mnv4.specs import MODEL_SPECS, get_spec, save_spec
from mnv4.train import load_teacher

pytest.importorskip("sklearn", reason="the digits data set comes from scikit-learn (dev extra)")

VENV_BIN = Path(sys.executable).parent
SPACE = SPACES["tiny"]
COST = roofline_cost("pixel6-cpu")


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    from digits import write_digits_imagefolder

    return write_digits_imagefolder(tmp_path_factory.mktemp("digits32"), size=32)


def median_cost() -> float:
    """T0 for the tests: the median roofline cost of random architectures of the tiny space."""
    generator = torch.Generator().manual_seed(0)
    costs = sorted(COST(SPACE.decode(SPACE.random(generator)), 32) for _ in range(101))
    return costs[50]


def config(data: Path, out: Path, **kw) -> SearchConfig:
    """Settings under which the tiny supernet learns the digits within a few dozen steps on a CPU."""
    values = dict(space="tiny", data=str(data), out=str(out), target=median_cost(), steps=6, global_batch=16,
                  crop_scale_min=0.85, crop_pct=1.0, hflip=False, holdout_fraction=0.2, rl_batch_multiplier=2,
                  rl_lr=0.05, beta=-0.5, workers=0, threads=1, progress=False, plot=False, seed=0)
    values.update(kw)
    return SearchConfig(**values)


# ----------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(ridge_point="pixel9-tpu"), "unknown ridge point 'pixel9-tpu'.*pixel6-cpu"),
        (dict(target=0.0), "T0 must be > 0"),
        (dict(target=-5.0), "T0 must be > 0"),
        (dict(beta=0.1), "beta must be < 0"),
        (dict(beta=0.0), "beta must be < 0"),
        (dict(space="conv_huge"), "unknown search space"),
        (dict(target_model="mobilenetv4_conv_small"), "exactly one of them"),
        (dict(reward="linear"), "reward must be one of"),
        (dict(arch_warmup_fraction=0.5), "must be <= rl_delay_fraction"),
        (dict(stage="coarse", base="mobilenetv4_conv_small"), "only applies to stage 'fine'"),
    ],
)
def test_bad_settings_are_one_user_error(tmp_path, kw, message):
    with pytest.raises(UserError, match=message):
        config(tmp_path, tmp_path / "out", **kw)


def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('{"name": "x", "stages": []}')
    small = save_spec(replace(MODEL_SPECS["mobilenetv4_conv_small"], name="not_tiny"), tmp_path / "not_tiny.json")
    base = ["search", "--space", "tiny", "--data", str(tmp_path), "--out", str(tmp_path / "o")]
    cases = [
        (["--target", "1e7", "--rp", "pixel9"], "unknown ridge point 'pixel9'"),
        (["--target", "-1"], "T0 must be > 0"),
        (["--target", "1e7", "--beta", "0.2"], "beta must be < 0"),
        (["--target", "1e7", "--stage", "fine", "--base", str(bad)], "missing field(s) stem, resolution"),
        (["--target", "1e7", "--stage", "fine", "--base", str(small)], "not a point of search space 'tiny'"),
        (["--target-model", str(bad)], "missing field(s) stem, resolution"),
        (["--target", "1e7", "--fix-expansion", "5"], "s0.b0.expand: 5.0 is not one of the choices"),
        (["--target", "1e7"], "train"),  # no train/ folder
    ]
    for extra, message in cases:
        assert cli_main(base + extra) == 2, extra
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, (extra, err)
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").iterdir())


# ----------------------------------------------------------------------------------------------- outputs, resume
def test_search_writes_spec_summary_history_and_python_table(digits, tmp_path):
    result = search(config(digits, tmp_path / "out", steps=5, plot=True, name="found"))
    assert result.complete and [s.stage for s in result.stages] == ["coarse", "fine"]
    spec = get_spec(str(result.files["spec"]))  # a valid spec file that create_model takes
    assert spec == result.spec and spec.name == "found" and SPACE.contains(spec)
    assert result.cost == pytest.approx(COST(spec, 32))
    # the fine stage kept the coarse stage's widths and depths
    coarse, fine = (s.values for s in result.stages)
    assert {k: v for k, v in coarse.items() if k.endswith(("width", "depth"))} == {
        k: v for k, v in fine.items() if k.endswith(("width", "depth"))}
    assert all(coarse[k] == v for k, v in (("s0.b0.start_dw", 0), ("s0.b0.mid_dw", 3), ("s0.b0.expand", 4)))
    summary = json.loads(result.files["summary"].read_text())
    assert summary["cost"] == pytest.approx(result.cost) and summary["target"] == pytest.approx(result.target)
    assert set(summary["stages"][-1]["probabilities"]) == set(result.probabilities)
    for probs in result.probabilities.values():
        assert sum(probs.values()) == pytest.approx(1.0, abs=1e-4)
    assert len(result.files["history"].read_text().splitlines()) == 1 + 10
    if "plot" in result.files:  # matplotlib is optional
        assert result.files["plot"].stat().st_size > 10_000
    namespace = dict(vars(mnv4.specs))
    exec(spec_as_python(spec), namespace)  # the printed table is valid specs.py syntax for the same network
    table = namespace["FOUND"]
    assert (table.stages, table.stem, table.resolution, table.head_hidden) == (
        spec.stages, spec.stem, spec.resolution, spec.head_hidden)


def test_joint_stage_searches_every_decision_in_one_supernet(digits, tmp_path):
    result = search(config(digits, tmp_path / "joint", steps=4, stage="joint", fix_expansion=4))
    assert result.complete and [s.stage for s in result.stages] == ["joint"] and len(result.history) == 4
    searched = set(result.probabilities)
    assert {"s0.width", "s0.depth", "s0.b0.start_dw", "s0.b0.mid_dw"} <= searched
    assert not any(name.endswith("expand") for name in searched)
    assert all(row.expand == 4 for stage in result.spec.stages[1:-1] for row in stage)
    assert SPACE.contains(result.spec)


def test_supernet_trains_on_offline_soft_labels(digits, tmp_path):
    """The paper trains the supernet on an offline distillation set: labels from `--precompute-soft-labels` for
    the very crops the search re-creates (same seed and augmentation), refused for other crop settings."""
    from mnv4.model import MobileNetV4
    from mnv4.train import TrainConfig, precompute_soft_labels
    from mnv4.train.distill import AUG_FIELDS

    cfg = config(digits, tmp_path / "kd", steps=4, stage="coarse")
    torch.manual_seed(0)
    teacher = MobileNetV4(SPACE.decode(SPACE.largest()), num_classes=10).eval()
    # what `mnv4 train --precompute-soft-labels` is given: the search's seed and augmentation settings
    student = TrainConfig(**{name: getattr(cfg, name) for name in AUG_FIELDS}, workers=0)
    labels = precompute_soft_labels(teacher, digits / "train", student, tmp_path / "soft.safetensors", replicas=2,
                                    image_size=32)
    result = search(replace(cfg, soft_labels=str(labels)))
    plain = search(replace(cfg, out=str(tmp_path / "plain")))
    assert result.complete and len(result.history) == 4
    # same architectures and images, other targets: the KD loss differs from the plain cross-entropy
    assert [r["loss"] for r in result.history] != pytest.approx([r["loss"] for r in plain.history], rel=1e-3)
    with pytest.raises(UserError, match="other crops.*crop_scale_min"):
        search(replace(cfg, soft_labels=str(labels), crop_scale_min=0.5, out=str(tmp_path / "bad")))


def _final_state(out: Path) -> dict:
    return load_checkpoint(list_checkpoints(out)[-1], entry="learner")


@pytest.mark.parametrize("stop_after", [4, 9])  # in the coarse stage, in the fine stage
def test_resumed_search_equals_an_uninterrupted_one(digits, tmp_path, stop_after):
    full = search(config(digits, tmp_path / "full", save_every_steps=2))
    stopped = search(config(digits, tmp_path / "cut", save_every_steps=2, stop_after=stop_after))
    assert not stopped.complete and len(stopped.history) == stop_after
    resumed = search(config(digits, tmp_path / "cut", save_every_steps=2, resume="auto"))
    assert resumed.history == full.history  # every loss, quality, cost, reward, baseline and entropy
    assert resumed.spec == full.spec and resumed.probabilities == full.probabilities
    a, b = _final_state(tmp_path / "full"), _final_state(tmp_path / "cut")
    for part in ("model", "learner"):
        flat_a, flat_b = _flatten(a[part]), _flatten(b[part])
        assert flat_a.keys() == flat_b.keys()
        assert all(torch.equal(flat_a[k], flat_b[k]) if isinstance(flat_a[k], torch.Tensor) else flat_a[k] == flat_b[k]
                   for k in flat_a), part
    with pytest.raises(UserError, match="another search.*seed"):
        search(config(digits, tmp_path / "cut", resume="auto", seed=1))


def _flatten(tree, prefix="") -> dict:
    if isinstance(tree, dict):
        return {k: v for key, value in tree.items() for k, v in _flatten(value, f"{prefix}{key}.").items()}
    if isinstance(tree, (list, tuple)):
        return {k: v for i, value in enumerate(tree) for k, v in _flatten(value, f"{prefix}{i}.").items()}
    return {prefix: tree}


def run_cmd(cmd: list[str], timeout: float = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done


def cli_flags(data: Path, out: Path, target: float, steps: int) -> list[str]:
    return ["--space", "tiny", "--data", str(data), "--out", str(out), "--target", repr(target), "--steps",
            str(steps), "--global-batch", "32", "--workers", "0", "--threads", "1", "--rl-lr", "0.05", "--beta",
            "-0.5", "--no-progress", "--set", "crop_pct=1.0", "--set", "crop_scale_min=0.85", "--set", "hflip=false",
            "--set", "holdout_fraction=0.2", "--set", "rl_batch_multiplier=2"]


def test_torchrun_two_processes_sample_their_own_architectures(digits, tmp_path):
    out = tmp_path / "ddp"
    cmd = [str(VENV_BIN / "torchrun"), "--standalone", "--nproc-per-node=2", "-m", "mnv4.nas",
           *cli_flags(digits, out, median_cost(), 6)]
    run_cmd(cmd)
    summary = json.loads((out / "search.json").read_text())
    assert SPACE.contains(get_spec(str(out / f"{summary['spec']['name']}.json")))
    rows = (out / "history.csv").read_text().splitlines()[1:]
    header = (out / "history.csv").read_text().splitlines()[0].split(",")
    rewards = [dict(zip(header, r.split(","), strict=True)) for r in rows]
    # the baseline's input is the mean over both ranks: it differs from rank 0's own reward when the ranks'
    # architectures (or their quality batches) differ
    assert any(abs(float(r["reward"]) - float(r["step_baseline"])) > 1e-9 for r in rewards)
    assert len(rows) == 12


def test_a_spec_file_works_wherever_a_variant_name_does(tmp_path, capsys):
    """models, roofline, bench and export take the spec file a search writes (train: see the slow test)."""
    spec = SPACE.decode(SPACE.random(torch.Generator().manual_seed(2)), name="searched_here")
    path = str(save_spec(spec, tmp_path / "searched_here.json"))
    assert cli_main(["models", path]) == 0
    assert "searched_here" in capsys.readouterr().out
    assert cli_main(["roofline", path, "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert f"{COST(spec, 32) / 1e9:.3f} G effective MACs" in out  # the search's cost is the roofline's ModelTime
    assert cli_main(["bench", "--quick", "--models", path, "--backends", "eager", "--no-plot", "--out",
                     str(tmp_path / "bench")]) == 0
    assert "searched_here" in capsys.readouterr().out
    pytest.importorskip("onnxruntime", reason="the ONNX export check needs onnxruntime (onnx extra)")
    assert cli_main(["export", path, "--format", "onnx", "--random-weights", "--out", str(tmp_path / "s.onnx")]) == 0
    assert "ONNX check OK" in capsys.readouterr().out


def test_validate_cost_needs_30_architectures(capsys):
    assert cli_main(["search", "--space", "tiny", "--validate-cost", "10"]) == 2
    assert "--validate-cost must be >= 30, got 10" in capsys.readouterr().err


@pytest.mark.slow
def test_validate_cost_measures_random_architectures_of_the_space(capsys, tmp_path):
    table = tmp_path / "latency_table.json"
    assert cli_main(["search", "--space", "tiny", "--validate-cost", "--rp", "pixel8-edgetpu", "--latency-table",
                     str(table), "--threads", "1"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.startswith("random_")]
    assert len(rows) == 30 and all(float(row[1]) > 0 for row in rows)  # 30 measured latencies
    rhos = [float(line.split()[1]) for line in out.splitlines() if line.strip().startswith(("[1]", "[2]"))]
    assert len(rhos) == 2 and all(-1.0 <= rho <= 1.0 for rho in rhos)  # the roofline and the latency table
    assert "latency table" in out and table.exists()


def test_latency_table_cost_is_refused_under_torchrun():
    from mnv4.nas import make_cost

    with pytest.raises(UserError, match="one process"):
        make_cost(SearchConfig(cost="latency-table", target=1.0), world_size=2)


# ----------------------------------------------------------------------------------------------- the whole pipeline
@pytest.mark.slow
def test_search_then_train_and_export_the_result(digits, tmp_path):
    """coarse then fine on the digits, then `mnv4 train --model found.json` and `mnv4 export` to ONNX."""
    target = median_cost()
    out = tmp_path / "search"
    done = run_cmd([sys.executable, "-m", "mnv4.nas", *cli_flags(digits, out, target, 60), "--name", "digits_nas"])
    assert "UIB(" in done.stdout and "x T0" in done.stdout  # the table and the cost are printed
    spec_file = out / "digits_nas.json"
    spec = get_spec(str(spec_file))
    cost = COST(spec, 32)
    assert abs(cost / target - 1) <= 0.10, (cost, target, SPACE.describe(SPACE.encode(spec)))
    summary = json.loads((out / "search.json").read_text())
    assert [s["stage"] for s in summary["stages"]] == ["coarse", "fine"]

    train_out = tmp_path / "train"
    run_cmd([sys.executable, "-m", "mnv4.train", "--model", str(spec_file), "--data", str(digits), "--out",
             str(train_out), "--image-size", "32", "--epochs", "2", "--global-batch", "32", "--lr", "2e-3",
             "--workers", "0", "--threads", "1", "--no-progress", "--no-tensorboard", "--set", "val_crop_pct=1.0",
             "--set", "crop_scale_min=0.85", "--set", "hflip=false", "--set", "grad_clip=1.0"])
    epochs = (train_out / "epochs.csv").read_text().splitlines()
    header, last = epochs[0].split(","), epochs[-1].split(",")
    assert float(last[header.index("val_top1")]) > 50.0  # chance is 10%

    # the weights carry the table: they still load as a teacher after the spec file is gone
    weights = train_out / "model.safetensors"
    spec_file.rename(tmp_path / "moved.json")
    teacher = load_teacher(str(weights), num_classes=10)
    assert teacher.spec.stages == spec.stages
    spec_file = tmp_path / "moved.json"

    onnx_file = tmp_path / "found.onnx"
    pytest.importorskip("onnxruntime", reason="ONNX export check needs onnxruntime (onnx extra)")
    run_cmd([sys.executable, "-c", "import sys; from mnv4.cli import main; sys.exit(main())", "export",
             str(spec_file), "--weights", str(train_out / "model.safetensors"), "--format", "onnx", "--out",
             str(onnx_file)])
    assert onnx_file.stat().st_size > 100_000
