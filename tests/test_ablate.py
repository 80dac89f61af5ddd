"""`mnv4 ablate`: the study models are what they say (counts by hand), the MHSA block is multi-head attention, the
summary rows are the paper's, and the command runs small and refuses bad input."""

import json

import pytest
import torch

from mnv4.analysis import count_params, profile_layers
from mnv4.blocks import MobileMQA
from mnv4.cli import main
from mnv4.deploy import deploy
from mnv4.nas.studies import STUDIES, MobileMHSA, MultiHeadAttention2d, StudyConfig, count_study_model
from mnv4.specs import CONV_LARGE, HYBRID_MEDIUM, MQA
from mnv4.testing import make_nondegenerate, relative_error


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # see test_nas_cost: two threads crawl on a loaded 2-core machine
    yield
    torch.set_num_threads(threads)


def _heads_loop_attention(attn: MultiHeadAttention2d, x: torch.Tensor) -> torch.Tensor:
    """Multi-head attention written out head by head (the textbook form), with the module's own projections."""
    B, _, H, W = x.shape
    h, d = attn.num_heads, attn.key_dim
    q = attn.query(x).reshape(B, h, d, H * W)
    k = attn.key(x).flatten(2).reshape(B, h, d, -1)
    v = attn.value(x).flatten(2).reshape(B, h, d, -1)
    heads = []
    for j in range(h):
        logits = q[:, j].transpose(1, 2) @ k[:, j] / d**0.5  # (B, N, M)
        heads.append((logits.softmax(-1) @ v[:, j].transpose(1, 2)).transpose(1, 2))  # (B, d, N)
    return attn.output(torch.cat(heads, dim=1).reshape(B, h * d, H, W))


@pytest.mark.parametrize("kv_stride", [1, 2])
def test_mhsa_is_multi_head_attention(kv_stride):
    torch.manual_seed(0)
    block = make_nondegenerate(MobileMHSA(32, num_heads=4, key_dim=8, kv_stride=kv_stride, layer_scale=1e-5),
                               input_size=(8, 8), in_chans=32)
    x = torch.randn(2, 32, 8, 8)
    with torch.no_grad():
        expected = x + block.layer_scale(_heads_loop_attention(block.attn, block.norm(x)))
        assert relative_error(block(x), expected) < 1e-5
        block.attn.impl = "math"
        assert relative_error(block(x), expected) < 1e-5
    # Per-head K and V: the key/value projections are C -> heads x d, and nothing else differs from the MQA block.
    mqa = MobileMQA(32, num_heads=4, key_dim=8, kv_stride=kv_stride, layer_scale=1e-5)
    assert count_params(block) - count_params(mqa) == 2 * 32 * 8 * (4 - 1)
    shapes = {n: p.shape for n, p in block.named_parameters()}
    differ = {n for n, p in mqa.named_parameters() if shapes[n] != p.shape}
    assert set(shapes) == {n for n, _ in mqa.named_parameters()}
    assert differ == {"attn.key.proj.weight", "attn.value.proj.weight"}
    # The profile counts the same attention MACs and h times the K/V reads.
    prof = {r.name: r for r in profile_layers(block, (8, 8), in_chans=32)}
    ref = {r.name: r for r in profile_layers(mqa, (8, 8), in_chans=32)}
    keys = (8 // kv_stride) ** 2
    assert prof["attn.matmuls"].macs == ref["attn.matmuls"].macs == 4 * 64 * keys * 16
    assert prof["attn.matmuls"].input_elems - ref["attn.matmuls"].input_elems == (4 - 1) * keys * 16


@pytest.fixture(scope="module")
def mqa_study():
    study = STUDIES["mqa"]
    return {m.label: (m, m.build()) for m in study.models}


def test_mqa_study_models_are_base_plus_three_blocks(mqa_study):
    base, mhsa, mqa = (mqa_study[k][1] for k in ("base", "+3 MHSA", "+3 MQA"))
    assert mqa_study["base"][0].spec == CONV_LARGE
    rows = mqa_study["+3 MQA"][0].spec.stages[3]
    assert [type(r).__name__ for r in rows[-6:]] == ["MQA", "UIB"] * 3
    assert [r for r in rows if not isinstance(r, MQA)] == list(CONV_LARGE.stages[3])
    assert sum(isinstance(m, MobileMHSA) for m in mhsa.modules()) == 3
    assert sum(type(m) is MobileMQA for m in mqa.modules()) == 3
    # Params and MACs: the base's plus exactly those of three stand-alone blocks at the /32 stage's input.
    res, size = 128, 128 // 32
    one = {"+3 MQA": MobileMQA(512, 8, 64), "+3 MHSA": MobileMHSA(512, 8, 64)}
    base_params, base_macs, _ = count_study_model(base, res)
    for label, model in (("+3 MQA", mqa), ("+3 MHSA", mhsa)):
        params, macs, roofline = count_study_model(model, res)
        block_macs = sum(r.macs for r in profile_layers(one[label], (size, size), in_chans=512))
        assert params - base_params == 3 * count_params(one[label]), label
        assert macs - base_macs == 3 * block_macs, label
        assert roofline["pixel6-cpu"] > macs  # memory time counts at a ridge point above 0
    # MQA vs MHSA by hand: K and V projections 512 -> 64 vs 512 -> 8 x 64, three blocks.
    assert count_params(mhsa) - count_params(mqa) == 3 * 2 * 512 * 64 * (8 - 1)


def test_kv_study_changes_exactly_the_kv_down_convs():
    without, with_kv = (m.build() for m in STUDIES["kv"].models)
    assert STUDIES["kv"].models[1].spec == HYBRID_MEDIUM
    p_without = {n: p.shape for n, p in without.named_parameters()}
    p_with = {n: p.shape for n, p in with_kv.named_parameters()}
    extra = set(p_with) - set(p_without)
    assert set(p_without) <= set(p_with)
    assert all(p_with[n] == s for n, s in p_without.items())  # every other weight is the same
    # Hybrid-M's four /16-stage MQA blocks (160 channels), K and V: DW 3x3 weight + BN weight and bias.
    assert {n.split(".attn.")[1] for n in extra} == {f"{b}.{p}" for b in ("key", "value")
                                                   for p in ("down_conv.weight", "norm.weight", "norm.bias")}
    assert len({n.split(".attn.")[0] for n in extra}) == 4
    assert count_params(with_kv) - count_params(without) == 4 * 2 * (9 * 160 + 2 * 160)
    # Layer by layer: only the K/V branches and the attention matmuls of those blocks change.
    a = {r.name: r for r in profile_layers(without, (64, 64))}
    b = {r.name: r for r in profile_layers(with_kv, (64, 64))}
    changed = {n for n in b if n not in a or a[n] != b[n]}
    assert changed and all(".attn.key." in n or ".attn.value." in n or n.endswith("attn.matmuls") for n in changed)


def test_summary_rows_reproduce_the_papers():
    # Our summary definitions, applied to the paper's own tables, give the figures it prints.
    tab2 = STUDIES["mqa"].paper_summary()
    assert tab2[0] == pytest.approx(-0.03)
    assert [round(100 * v, 1) for v in tab2[1:]] == [-28.6, -25.5, -84.2, -39.0, -41.1]
    tab3 = STUDIES["kv"].paper_summary()
    assert tab3[0] == pytest.approx(-0.06)
    assert [round(100 * v) for v in tab3[1:]] == [3, 23, 25]


def test_deployed_mhsa_model_keeps_its_logits(mqa_study):
    torch.manual_seed(0)
    model = make_nondegenerate(mqa_study["+3 MHSA"][0].build(), input_size=(64, 64), batch_size=2, passes=1)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert relative_error(deploy(model)(x), model(x)) < 1e-4


@pytest.mark.slow  # ~10 s idle: two ONNX exports
def test_ablate_command_runs_small(tmp_path, capsys):
    out = tmp_path / "ablate.json"
    assert main(["ablate", "--study", "kv", "--quick", "--runtimes", "eager,onnxruntime", "--threads", "1",
                 "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "paper Tab. 3" in text and "onnxruntime ms" in text and "efficiency gain" in text and "+23.4%" in text
    data = json.loads(out.read_text())
    assert [r["label"] for r in data[0]["ours"]] == ["without", "with"]
    assert all(r["latency_ms"]["eager"] > 0 and r["latency_ms"]["onnxruntime"] > 0 for r in data[0]["ours"])
    assert data[0]["paper"]["rows"]["with"] == [80.71, 1.245, 12.8, 5.9]


@pytest.mark.parametrize("args, message", [
    (["--study", "mqx"], "unknown study 'mqx'"),
    (["--runtimes", "tensorrt"], "unknown runtime(s) 'tensorrt'"),
    (["--resolution", "16"], "--resolution must be >= 32"),
    (["--threads", "0"], "--threads must be >= 1"),
])
def test_ablate_bad_input_one_line(args, message, capsys):
    assert main(["ablate", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err


def test_study_config_validates():
    with pytest.raises(ValueError, match="--rounds"):
        StudyConfig(rounds=0).validate()
