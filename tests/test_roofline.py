"""Roofline model (paper §3, App. F; docs/design.md §7): per-layer MACs and bytes by hand, the model's properties,
the fit and the CLI."""

import json
import math

import numpy as np
import pytest
from torch import nn

from mnv4.analysis import profile_layers
from mnv4.bench.catalog import DEFAULT_MODELS
from mnv4.blocks import MobileMQA
from mnv4.cli import main
from mnv4.roofline import (
    NAMED_PROFILES,
    Hardware,
    effective_macs,
    fit_ridge_point,
    model_roofline,
    model_time,
    roofline_layers,
    spearman,
    sweep,
)


@pytest.fixture(scope="module")
def paper_layers():
    """Roofline layers (int8) of the five paper models and both MobileNetV3s (at 128 px: the properties tested hold
    at any size, and this keeps the test fast)."""
    return {name: model_roofline(name, 128)[0] for name in DEFAULT_MODELS}


def _by_name(layers):
    return {layer.name: layer for layer in layers}


def test_conv_dwconv_linear_by_hand():
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False),  # 16x16 -> 8x8
        nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=True),  # depthwise
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 5),
    )
    int8 = _by_name(roofline_layers(profile_layers(net, (16, 16), in_chans=3), "int8"))
    fp32 = _by_name(roofline_layers(profile_layers(net, (16, 16), in_chans=3), "fp32"))
    assert set(int8) == {"0", "1", "4"}
    # conv: 8 x 8 x 8 outputs, each 3 x 3 x 3 MACs; weights 8*3*9 = 216, input 3*16*16 = 768, output 512.
    assert (int8["0"].kind, int8["0"].macs, int8["0"].bytes) == ("conv", 512 * 27, 216 + 768 + 512)
    assert fp32["0"].bytes == 4 * (216 + 768 + 512)
    # depthwise: 512 outputs x 9 MACs; weights 8*9 + 8 bias; input = output = 512.
    assert (int8["1"].kind, int8["1"].macs, int8["1"].bytes) == ("dwconv", 512 * 9, 80 + 512 + 512)
    # linear 8 -> 5: 40 MACs; 40 weights + 5 bias; input 8, output 5.
    assert (int8["4"].kind, int8["4"].macs, int8["4"].bytes) == ("linear", 40, 45 + 8 + 5)
    assert int8["0"].intensity == pytest.approx(512 * 27 / 1496)


def test_mqa_block_by_hand():
    # 16 channels, 2 heads of dim 8, K/V downsampled by a stride-2 3x3 DW conv; 8x8 input: N = 64 queries, M = 16 keys.
    block = MobileMQA(16, num_heads=2, key_dim=8, kv_stride=2)
    layers = _by_name(roofline_layers(profile_layers(block, (8, 8), in_chans=16), "int8"))
    query, attn, out = layers["attn.query.proj"], layers["attn.matmuls"], layers["attn.output.proj"]
    assert (query.macs, query.bytes) == (64 * 16 * 16, 16 * 16 + 1024 + 1024)
    for branch in ("key", "value"):
        down, proj = layers[f"attn.{branch}.down_conv"], layers[f"attn.{branch}.proj"]
        assert (down.kind, down.macs, down.bytes) == ("dwconv", 16 * 16 * 9, 16 * 9 + 1024 + 256)
        assert (proj.macs, proj.bytes) == (16 * 16 * 8, 16 * 8 + 256 + 128)
    # Q K^T: 2 heads x 64 x 16 x 8 MACs, softmax(.) V: the same with the value dim; reads Q, K, V, writes O.
    assert attn.kind == "attention"
    assert attn.macs == 2 * 64 * 16 * (8 + 8)
    assert attn.bytes == (2 * 64 * 8 + 16 * 8 + 16 * 8) + 2 * 64 * 8
    assert (out.macs, out.bytes) == (64 * 16 * 16, 256 + 1024 + 1024)
    assert sum(la.macs for la in layers.values()) == 16384 + 2 * (2304 + 2048) + 32768 + 16384


def test_ridge_point_zero_is_mac_count(paper_layers):
    for layers in paper_layers.values():
        total = sum(la.macs for la in layers)
        assert effective_macs(layers, 0.0) == total
        assert sweep(layers, [0.0])[0] == total
        peak = 3.7e10
        assert effective_macs(layers, 0.0) / peak == total / peak
        # The same through Hardware: bandwidth so large that memory never binds.
        assert model_time(layers, Hardware(peak, 1e30)) == pytest.approx(total / peak, rel=1e-12)


def test_higher_ridge_point_never_predicts_faster(paper_layers):
    grid = np.concatenate([np.linspace(0, 10, 41), np.linspace(10, 1000, 199)])
    for name, layers in paper_layers.items():
        curve = sweep(layers, grid)
        assert np.all(np.diff(curve) >= 0), name
        # With PeakMACs fixed, a higher RP is a lower bandwidth: model_time must not drop.
        times = [model_time(layers, Hardware(1e11, 1e11 / rp)) for rp in grid[1:]]
        assert all(b >= a for a, b in zip(times, times[1:], strict=False)), name
        # Memory-bound layers: exactly those below the RP, and only they grow with it.
        rp = NAMED_PROFILES["pixel8-edgetpu"][0]
        grown = [la for la in layers if la.effective_macs(rp) > la.macs]
        assert grown == [la for la in layers if la.memory_bound(rp)]


def test_byte_heavy_model_loses_ground_at_high_ridge_point(paper_layers):
    # Spec §9: MAC-light, byte-heavy layers (the head) matter only at high RP. MNv3-S has few MACs but a large head,
    # so its cost relative to Conv-S must grow from RP 0 to RP 500.
    small, v3s = paper_layers["mobilenetv4_conv_small"], paper_layers["mobilenet_v3_small"]
    rel0 = sweep(v3s, [0])[0] / sweep(small, [0])[0]
    rel500 = sweep(v3s, [500])[0] / sweep(small, [500])[0]
    assert rel500 > rel0


def test_spearman_by_hand():
    assert spearman([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]) == pytest.approx(1 - 6 * 4 / (5 * 24))  # no ties: 0.8
    assert spearman([1, 2, 3, 4, 5], [1, 2, 2, 3, 4]) == pytest.approx(9.5 / math.sqrt(95))  # ties share rank 2.5
    assert spearman([1, 2, 3], [30, 20, 10]) == pytest.approx(-1.0)
    with pytest.raises(ValueError):
        spearman([1], [1])


def test_fit_recovers_a_known_machine(paper_layers):
    names = list(paper_layers)
    layers = [paper_layers[n] for n in names]
    true_rp, peak = 42.0, 2.5e10
    latencies = [sweep(la, [true_rp])[0] / peak for la in layers]
    fit = fit_ridge_point(layers, latencies, ridge_points=np.arange(0, 500.01, 0.5))
    assert fit.ridge_point == pytest.approx(true_rp)
    assert fit.peak_macs == pytest.approx(peak, rel=1e-9)
    assert fit.peak_bw == pytest.approx(peak / true_rp, rel=1e-9)
    assert fit.log_rmse == pytest.approx(0.0, abs=1e-9)
    assert fit.spearman_roofline == pytest.approx(1.0)
    assert fit.ridge_point_range[0] <= true_rp <= fit.ridge_point_range[1]
    with pytest.raises(ValueError, match="at least 3"):
        fit_ridge_point(layers[:2], latencies[:2])
    with pytest.raises(ValueError, match="positive"):
        fit_ridge_point(layers, [0.0] * len(layers))


@pytest.mark.parametrize("peaks", [(0, 1e9), (-1e9, 1e9), (1e9, 0), (1e9, float("nan"))])
def test_bad_peaks_rejected(peaks):
    with pytest.raises(ValueError, match="positive finite"):
        Hardware(*peaks)


def test_cli_layer_table_heaviest_first(capsys):
    assert main(["roofline", "mobilenetv4_conv_small", "--top", "5", "--profile", "pixel8-edgetpu"]) == 0
    out = capsys.readouterr().out
    assert "int8 (1 byte per weight/activation element)" in out and "433.8" in out
    layers = model_roofline("mobilenetv4_conv_small")[0]
    heaviest = max(layers, key=lambda la: la.effective_macs(433.8))
    first_row = next(line for line in out.splitlines() if line.strip().startswith("1 "))
    assert heaviest.name in first_row and "memory" in first_row


def test_cli_user_peaks_give_milliseconds(capsys):
    assert main(["roofline", "mobilenet_v3_small", "--peak-macs", "1e10", "--peak-bw", "5e9", "--top", "3"]) == 0
    out = capsys.readouterr().out
    layers = model_roofline("mobilenet_v3_small")[0]
    expected = model_time(layers, Hardware(1e10, 5e9)) * 1e3
    assert f"{expected:.3f} ms" in out and "ridge point 2 MACs/byte" in out


def test_cli_sweep_writes_png(tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="plots need matplotlib (pip install 'mnv4[plot]')")
    from PIL import Image

    out = tmp_path / "sweep.png"
    assert main(["roofline", "--sweep", "--models", "mobilenetv4_conv_small,mobilenet_v3_small",
                 "--resolution", "96", "--max-rp", "100", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "relative to MNv4-Conv-S" in text and "MNv3-S" in text  # the first model is the reference by default
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(out) as img:
        img.load()
        assert img.size[0] > 600 and img.size[1] > 300


@pytest.mark.parametrize(
    "argv, message",
    [
        (["roofline", "mobilenetv4_conv_smal"], "unknown model"),
        (["roofline", "mobilenetv4_conv_small", "--peak-macs", "0", "--peak-bw", "1e9"], "--peak-macs must be > 0"),
        (["roofline", "mobilenetv4_conv_small", "--peak-macs", "1e9", "--peak-bw", "-5"], "--peak-bw must be > 0"),
        (["roofline", "mobilenetv4_conv_small", "--peak-macs", "1e9"], "give both"),
        (["roofline", "mobilenetv4_conv_small", "--rp", "-1"], "--rp must be >= 0"),
        (["roofline"], "name a model with --model"),
        (["roofline", "mobilenetv4_conv_small", "--sweep"], "--models"),
        (["roofline", "--sweep", "--max-rp", "0"], "--max-rp"),
    ],
)
def test_cli_bad_input_one_clear_error(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "content, message",
    [
        ("", "is empty"),
        ("{not json", "not valid JSON"),
        (json.dumps({"hello": 1}), "not a mnv4 bench results file"),
        (json.dumps({"format": "mnv4-bench", "version": 1, "results": []}), "holds no results"),
    ],
)
def test_cli_fit_bad_results_file(tmp_path, content, message, capsys):
    path = tmp_path / "bench.json"
    path.write_text(content)
    assert main(["roofline", "--fit", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_cli_fit_missing_file(tmp_path, capsys):
    assert main(["roofline", "--fit", str(tmp_path / "nope.json")]) == 2
    assert "no results file" in capsys.readouterr().err


def test_cli_fit_on_synthetic_results(tmp_path, capsys):
    """A results file whose latencies follow a known roofline: the CLI reports that RP and perfect correlation."""
    from mnv4.bench.catalog import catalog_entry

    # Small models at 64 px (fast); RP 5 lies below the point where all their fp32 layers turn memory bound
    # (~12 MACs/byte), so the fit can identify it.
    names = ["mobilenetv4_conv_small", "mobilenetv4_conv_small_050", "mobilenet_v3_large", "mobilenet_v3_small"]
    rows = []
    for name in names:
        entry = catalog_entry(name)
        layers, res = model_roofline(name, 64, "fp32")
        rows.append({
            "model": name, "label": entry.label, "backend": "eager", "device": "cpu", "dtype": "fp32",
            "batch_size": 1, "resolution": res, "params": 1, "macs": sum(la.macs for la in layers),
            "top1": entry.top1, "top1_source": entry.top1_source, "threads": 2, "status": "ok",
            "median_ms": sweep(layers, [5.0])[0] / 4e9 * 1e3,
        })
    path = tmp_path / "bench.json"
    path.write_text(json.dumps({"format": "mnv4-bench", "version": 1, "results": rows}))
    assert main(["roofline", "--fit", str(path)]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("eager"))
    fields = row.split()
    assert float(fields[3]) == pytest.approx(5.0, abs=0.1)  # RP
    assert float(fields[4]) == pytest.approx(4.0, rel=0.01)  # GMAC/s
    assert float(fields[7]) == pytest.approx(1.0)  # r_s roofline
    assert main(["roofline", "--fit", str(path), "--backend", "onnxruntime"]) == 2
    assert "no results for backend" in capsys.readouterr().err


def test_precision_scales_bytes_only():
    layers16 = model_roofline("mobilenet_v3_small", 64, "fp16")[0]
    layers8 = model_roofline("mobilenet_v3_small", 64, "int8")[0]
    assert [a.bytes for a in layers16] == [2 * b.bytes for b in layers8]
    assert [a.macs for a in layers16] == [b.macs for b in layers8]
