import json

from mnv4.cli import main


def test_models_table(capsys):
    assert main(["models", "*conv_small*"]) == 0
    out = capsys.readouterr().out
    assert "mobilenetv4_conv_small " in out and "3,774,024" in out and "0.186" in out
    assert "attention matmuls" in out


def test_models_json_lists_paper_models_first(capsys):
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows[:5]] == [
        "mobilenetv4_conv_small", "mobilenetv4_conv_medium", "mobilenetv4_conv_large",
        "mobilenetv4_hybrid_medium", "mobilenetv4_hybrid_large",
    ]
    hm = next(r for r in rows if r["name"] == "mobilenetv4_hybrid_medium")
    assert hm["resolution"] == 256 and hm["params"] == 11_074_648
    assert hm["attention_macs"] == 4 * (4 * 256 * 64 * 128) + 4 * (4 * 64 * 64 * 128)
