"""``mnv4 bench``: the harness, the backends, the files it writes and its errors (no timed assertions)."""

import csv
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from mnv4.bench import BenchConfig, load_results, run_benchmark
from mnv4.bench.backends import (
    AOTInductorBackend,
    CompileBackend,
    CudaBackend,
    EagerBackend,
    NotApplicable,
    OnnxRuntimeBackend,
    Prepared,
    all_backends,
    default_backend_names,
    resolve_backends,
)
from mnv4.bench.catalog import catalog_entry, resolve_models
from mnv4.bench.environment import capture_environment, default_threads, physical_cores
from mnv4.bench.runner import _measure, _runs_within_budget, expected_seconds, full_sweep_backends
from mnv4.bench.timing import Timing, time_callable
from mnv4.cli import main
from mnv4.cli.bench import plan_text
from mnv4.errors import UserError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _quick_backends() -> str:
    """eager and deployed always; ONNX Runtime too where it is installed (it is in the dev extras)."""
    names = ["eager", "deployed"]
    if OnnxRuntimeBackend().available():
        names.append("onnxruntime")
    return ",".join(names)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    pytest.importorskip("matplotlib", reason="the Pareto plot needs matplotlib (pip install 'mnv4[plot]')")
    argv = ["bench", "--quick", "--models", "mobilenetv4_conv_small,mobilenetv4_hybrid_medium,mobilenet_v3_large",
            "--backends", _quick_backends(), "--threads", "1", "--out", str(out)]
    return out, argv


def test_quick_end_to_end_writes_table_csv_json_png(quick_run, capsys):
    from PIL import Image

    out, argv = quick_run
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert text.startswith("expected duration: about ")  # before anything is measured
    # Environment, then the table: one row per model, one column per backend, speed-ups vs MNv3-L.
    assert "CPU:" in text and "threads: 1" in text and "torch " in text
    for label in ("MNv4-Conv-S", "MNv4-Hybrid-M", "MNv3-L"):
        assert label in text
    mnv3_row = next(line for line in text.splitlines() if line.startswith("MNv3-L"))
    assert mnv3_row.count("(1.00x)") == len(_quick_backends().split(","))
    n_cells = 3 * len(_quick_backends().split(","))
    with (out / "bench.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == n_cells and all(r["status"] == "ok" for r in rows), rows
    assert {r["resolution"] for r in rows} == {"64"}
    report = load_results(out / "bench.json")
    assert len(report.records) == n_cells
    for r in report.records:
        assert r.ok and r.runs == 3 and r.warmup == 1 and r.threads == 1
        assert 0 < r.min_ms <= r.median_ms <= r.p90_ms
        assert r.setup_s is not None and r.setup_s >= 0
        assert r.top1 is not None and r.top1_source
    data = json.loads((out / "bench.json").read_text())
    assert data["environment"]["threads"] == 1 and data["environment"]["libraries"]["torch"] == torch.__version__
    speedups = [row["speedup_vs_mobilenet_v3_large"] for row in data["results"] if row["model"] == "mobilenet_v3_large"]
    assert speedups and all(s == pytest.approx(1.0) for s in speedups)
    png = out / "bench_pareto.png"
    assert png.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(png) as img:
        img.load()
        assert img.format == "PNG" and img.size[0] >= 600 and img.size[1] >= 400
        low, high = img.convert("L").getextrema()
        assert high - low > 100  # not a blank canvas


def test_published_top1_and_sources():
    assert catalog_entry("mobilenetv4_conv_medium").top1 == 79.9  # paper Tab. 6
    assert "paper Tab. 6" in catalog_entry("mobilenetv4_hybrid_large").top1_source
    large, small = catalog_entry("mobilenet_v3_large"), catalog_entry("mobilenet_v3_small")
    # torchvision's weight metadata (no download): Large IMAGENET1K_V2 75.274, Small IMAGENET1K_V1 67.668.
    assert (large.top1, small.top1) == (75.274, 67.668)
    assert "IMAGENET1K_V2" in large.top1_source and "torchvision" in small.top1_source
    assert catalog_entry("mobilenetv4_conv_aa_medium").top1 is None
    names = [e.name for e in resolve_models(None)]
    assert names[:5] == ["mobilenetv4_conv_small", "mobilenetv4_conv_medium", "mobilenetv4_conv_large",
                         "mobilenetv4_hybrid_medium", "mobilenetv4_hybrid_large"]
    assert names[5:] == ["mobilenet_v3_large", "mobilenet_v3_small"]
    assert [e.resolution for e in resolve_models(None)] == [224, 256, 384, 256, 384, 224, 224]


def test_timing_statistics_and_call_count():
    calls = []
    timing = time_callable(lambda: calls.append(1), warmup=4, runs=7)
    assert len(calls) == 11 and timing.runs == 7
    t = Timing.from_samples([0.001, 0.002, 0.003, 0.004, 0.010])
    assert (t.median_ms, t.min_ms, t.mean_ms) == pytest.approx((3.0, 1.0, 4.0))
    assert t.p90_ms == pytest.approx(7.6)  # linear interpolation between 4 and 10 ms
    with pytest.raises(ValueError):
        time_callable(lambda: None, warmup=0, runs=0)


def test_time_budget_caps_runs_but_keeps_a_minimum():
    config = BenchConfig(runs=50, min_runs=10, max_seconds=2.0)
    assert _runs_within_budget(0.001, config) == 50
    assert _runs_within_budget(0.1, config) == 20
    assert _runs_within_budget(5.0, config) == 10


def test_environment_capture():
    env = capture_environment(3)
    assert env["threads"] == 3 and env["cpu"] and env["physical_cores"] >= 1
    assert 1 <= physical_cores() <= env["usable_cpus"]
    assert default_threads() == physical_cores()
    assert env["libraries"]["torch"] == torch.__version__


class _Failing(EagerBackend):
    name = "failing"

    def prepare(self, model, example, workdir, threads):
        raise RuntimeError("conversion exploded\nwith a long trace")


class _Refusing(EagerBackend):
    name = "refusing"

    def prepare(self, model, example, workdir, threads):
        raise NotApplicable("not for this model")


def _record():
    from mnv4.bench.results import BenchRecord

    return BenchRecord(model="m", label="m", backend="b", device="cpu", dtype="fp32", batch_size=1, resolution=32,
                       params=1, macs=1, top1=None, top1_source="", threads=1)


def test_failed_cell_is_recorded_not_fatal(tmp_path):
    def build():
        return nn.Sequential(nn.Conv2d(3, 4, 3)).eval()

    config = BenchConfig.quick()
    failed = _measure(_record(), _Failing(), build, 1, 32, tmp_path, 1, config)
    assert failed.status == "failed" and failed.note == "RuntimeError: conversion exploded" and not failed.ok
    refused = _measure(_record(), _Refusing(), build, 1, 32, tmp_path, 1, config)
    assert refused.status == "n/a" and refused.note == "not for this model"
    ok = _measure(_record(), EagerBackend(), build, 2, 32, tmp_path, 1, config)
    assert ok.ok and ok.runs == 3 and ok.images_per_s == pytest.approx(2e3 / ok.median_ms)


def test_deployed_backend_matches_eager_on_mnv4_and_baseline(tmp_path):
    from mnv4.bench.backends import DeployedBackend
    from mnv4.testing import relative_error

    backend = DeployedBackend()
    if not backend.available():
        pytest.skip(backend.unavailable_reason())
    for name in ("mobilenetv4_conv_small", "mobilenet_v3_small"):
        model = catalog_entry(name).build()  # already non-degenerate (measured BN statistics), eval mode
        x = torch.randn(2, 3, 64, 64)
        with torch.no_grad():
            expected = model(x)
        got = backend.prepare(model, x, tmp_path, 1).run()
        assert relative_error(got, expected) < 1e-4, name


@pytest.mark.parametrize(
    "backend", [CompileBackend(), pytest.param(AOTInductorBackend(), marks=pytest.mark.slow)], ids=lambda b: b.name
)
def test_compiling_backends_on_a_small_network(tmp_path, backend):
    if not backend.available():
        pytest.skip(backend.unavailable_reason())
    net = _small_net()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        expected = net(x)
    prepared = backend.prepare(net, x, tmp_path, 1)
    assert isinstance(prepared, Prepared)
    torch.testing.assert_close(prepared.run(), expected, rtol=1e-4, atol=1e-5)


def test_onnxruntime_backend_matches_eager(tmp_path):
    pytest.importorskip("onnxruntime", reason="ONNX Runtime not installed (pip install 'mnv4[onnx]')")
    backend = OnnxRuntimeBackend()
    if not backend.available():
        pytest.skip(backend.unavailable_reason())
    from mnv4.testing import relative_error

    model = catalog_entry("mobilenetv4_conv_small").build()  # already non-degenerate, eval mode
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
    (got,) = backend.prepare(model, x, tmp_path, 1).run()
    assert relative_error(torch.from_numpy(got), expected) < 1e-4
    assert (tmp_path / "model.onnx").is_file()


def test_cuda_backend_parts_without_a_gpu():
    fp32, bf16 = CudaBackend("fp32"), CudaBackend("bf16")
    assert (fp32.name, bf16.name) == ("cuda-fp32", "cuda-bf16")
    assert fp32.batch_sizes(1, (32, 8, 1)) == [1, 8, 32]  # the sweep always includes the requested batch size
    assert fp32.batch_sizes(4, (1, 8)) == [1, 4, 8]
    assert EagerBackend().batch_sizes(4, (1, 8)) == [4]  # CPU backends do not sweep
    with pytest.raises(ValueError, match="fp32"):
        CudaBackend("fp64")
    if not torch.cuda.is_available():
        assert fp32.unavailable_reason() == "no CUDA device"
        chosen, skipped = resolve_backends(None)
        assert "cuda-fp32" in skipped and "cuda-fp32" not in [b.name for b in chosen]
        # named but unavailable: skipped with the reason while the others run; alone: one clear error
        chosen, skipped = resolve_backends(["eager", "cuda-bf16"])
        assert [b.name for b in chosen] == ["eager"] and skipped == {"cuda-bf16": "no CUDA device"}
        with pytest.raises(ValueError, match=r"none of the requested backends is available here \(cuda-bf16: no CUDA"):
            resolve_backends(["cuda-bf16"])


def test_slow_to_build_backends_only_in_the_full_sweep_or_when_named():
    chosen, skipped = resolve_backends(None)
    default = {b.name for b in chosen} | set(skipped)
    assert {"eager", "deployed", "compile", "onnxruntime"} <= default
    slow = {"litert", "executorch", "executorch-int8", "aoti"}  # tens of seconds to minutes per model to build
    assert not slow & default
    assert set(default_backend_names(full=True)) == {b.name for b in all_backends()}
    chosen, skipped = resolve_backends(["aoti", "executorch-int8"])
    assert {b.name for b in chosen} | set(skipped) == {"aoti", "executorch-int8"}
    with pytest.raises(UserError, match="--full runs every backend"):
        BenchConfig(backends=["eager"], full=True).validate()


def test_plan_says_how_long_and_what_the_default_run_leaves_out():
    default = plan_text(BenchConfig())
    first, second = default.splitlines()
    assert first.startswith("expected duration: about ") and "7 models x " in first
    assert "leaves out litert, executorch, executorch-int8, aoti" in second and "`mnv4 bench --full`" in second
    chosen, _ = resolve_backends(None)
    # the full sweep adds minutes per model: its estimate is several times the default run's
    assert expected_seconds(BenchConfig(), full_sweep_backends()) > 3 * expected_seconds(BenchConfig(), chosen)
    # fewer models, a smaller time budget per cell: a shorter estimate
    assert expected_seconds(BenchConfig(models=["mobilenet_v3_small"]), chosen) < expected_seconds(BenchConfig(),
                                                                                                     chosen)
    assert expected_seconds(BenchConfig(max_seconds=1.0), chosen) < expected_seconds(BenchConfig(), chosen)
    named = plan_text(BenchConfig(models=["mobilenet_v3_small"], backends=["eager"]))
    assert named.splitlines() == [named] and "1 model x 1 backend (eager)" in named  # nothing left out to say


def _small_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 4)).eval()


@pytest.mark.parametrize("int8", [False, True])
def test_executorch_backends_on_a_small_network(tmp_path, int8):
    from mnv4.bench.backends import ExecuTorchBackend

    backend = ExecuTorchBackend(int8=int8)
    if not backend.available():
        pytest.skip(backend.unavailable_reason())
    net = _small_net()
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        expected = net(x)
    (got,) = backend.prepare(net, x, tmp_path, 1).run()
    if int8:  # int8 ranges from noise images: close, not equal
        assert backend.dtype == "int8" and (got - expected).abs().max() < 0.1 * expected.abs().max() + 1e-3
    else:
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    with pytest.raises(NotApplicable, match="batch 1"):
        backend.prepare(net, torch.randn(2, 3, 16, 16), tmp_path, 1)




@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_sweep_runs():
    report = run_benchmark(BenchConfig.quick(models=["mobilenetv4_conv_small"], backends=["cuda-fp32", "cuda-bf16"],
                                             cuda_batch_sizes=(1, 4)), progress=False)
    assert sorted((r.backend, r.batch_size) for r in report.records) == [
        ("cuda-bf16", 1), ("cuda-bf16", 4), ("cuda-fp32", 1), ("cuda-fp32", 4)]
    assert all(r.ok for r in report.records)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--backends", "eager,tensorrt"], "unknown backend 'tensorrt'"),
        (["--models", "mobilenetv4_conv_smal"], "unknown model 'mobilenetv4_conv_smal'"),
        (["--models", "mobilenetv4_conv_small", "--threads", "0"], "--threads must be >= 1"),
        (["--models", "mobilenetv4_conv_small", "--batch-size", "0"], "--batch-size must be >= 1"),
        (["--models", "mobilenetv4_conv_small", "--runs", "0"], "--runs must be >= 1"),
    ],
)
def test_bad_input_one_clear_error(extra, message, tmp_path, capsys):
    assert main(["bench", "--quick", "--out", str(tmp_path / "o"), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not Path(tmp_path / "o").exists()  # nothing written on bad input


def test_litert_backend_matches_eager(tmp_path):
    pytest.importorskip("litert_torch", reason="LiteRT converter not installed (pip install 'mnv4[tflite]')")
    pytest.importorskip("ai_edge_litert", reason="LiteRT runtime not installed (pip install 'mnv4[tflite]')")
    from mnv4.bench.backends import LiteRTBackend
    from mnv4.testing import relative_error

    backend = LiteRTBackend()
    if not backend.available():
        pytest.skip(backend.unavailable_reason())
    model = catalog_entry("mobilenetv4_conv_small").build()  # already non-degenerate, eval mode
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
    got = backend.prepare(model, x, tmp_path, 1).run()
    assert (tmp_path / "model.tflite").is_file()
    assert relative_error(torch.from_numpy(got), expected) < 1e-4
    with pytest.raises(NotApplicable, match="batch 1"):
        backend.prepare(model, torch.randn(2, 3, 64, 64), tmp_path, 1)


def _report(rows):
    """A bench report of (model, backend, median ms or None for a failed cell) rows, batch 1."""
    from mnv4.bench.results import BenchRecord, BenchReport

    records = []
    for model, backend, ms in rows:
        entry = catalog_entry(model)
        records.append(BenchRecord(
            model=model, label=entry.label, backend=backend, device="cpu", dtype="fp32", batch_size=1,
            resolution=entry.resolution, params=1, macs=1, top1=entry.top1, top1_source=entry.top1_source,
            threads=2, status="ok" if ms else "failed", median_ms=ms))
    return BenchReport(environment={"cpu": "test CPU", "threads": 2}, config={"batch_size": 1}, records=records)


def test_pareto_plot_names_each_model_once_at_its_fastest_point():
    pytest.importorskip("matplotlib", reason="the Pareto plot needs matplotlib (pip install 'mnv4[plot]')")
    import matplotlib.pyplot as plt
    from matplotlib.text import Annotation

    from mnv4.plots import pareto_figure

    latencies = {  # model: ms on eager, onnxruntime, litert -- every backend measures every model
        "mobilenetv4_conv_small": (8.6, 2.1, 4.3),
        "mobilenetv4_conv_medium": (24.5, 11.6, 12.2),
        "mobilenetv4_hybrid_medium": (38.7, 14.9, None),  # failed on litert: not drawn
        "mobilenet_v3_large": (15.7, 4.0, 3.6),
        "mobilenetv4_conv_aa_medium": (30.0, 12.0, 13.0),  # no published top-1: not drawn
    }
    backends = ("eager", "onnxruntime", "litert")
    report = _report([(m, b, ms) for m, row in latencies.items() for b, ms in zip(backends, row, strict=True)])
    fig = pareto_figure(report)
    try:
        (ax,) = fig.axes
        names = {a.get_text(): a.xy for a in ax.texts if isinstance(a, Annotation)}
        assert len([a for a in ax.texts if isinstance(a, Annotation)]) == len(names) == 4  # one per drawn model
        assert names == {
            "Conv-S": (2.1, 73.8), "Conv-M": (11.6, 79.9), "Hybrid-M": (14.9, 80.7),
            "MNv3-L": (3.6, pytest.approx(75.274)),
        }
        assert [t.get_text() for t in ax.get_legend().get_texts()] == list(backends)  # backends: colour + marker
        left, _ = ax.get_xlim()
        assert left < 2.1 / 2  # room for the fastest point's name on its left
    finally:
        plt.close(fig)
