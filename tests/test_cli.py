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


def test_every_command_names_its_model_with_model_and_the_old_spellings_still_work(capsys):
    """One way in the help (--model); the positional of roofline/export and detect's / segment's --backbone still
    read."""
    from mnv4.cli import build_parser
    from mnv4.cli._common import model_name
    from mnv4.cli.detect import detect_config_from_args

    assert main(["roofline", "--model", "mobilenetv4_conv_small", "--top", "2"]) == 0
    by_flag = capsys.readouterr().out
    assert main(["roofline", "mobilenetv4_conv_small", "--top", "2"]) == 0
    assert capsys.readouterr().out == by_flag and "mobilenetv4_conv_small at 224x224" in by_flag
    assert main(["roofline", "mobilenetv4_conv_small", "--model", "mobilenetv4_conv_medium"]) == 2
    assert "named twice" in capsys.readouterr().err
    parser = build_parser()
    for old, new in ((["--backbone", "mobilenetv4_hybrid_medium"], ["--model", "mobilenetv4_hybrid_medium"]),):
        a = detect_config_from_args(parser.parse_args(["detect", "train", *old]))
        b = detect_config_from_args(parser.parse_args(["detect", "train", *new]))
        assert a.backbone == b.backbone == "mobilenetv4_hybrid_medium"
    a = parser.parse_args(["export", "mobilenetv4_conv_small", "--out", "m.onnx"])
    b = parser.parse_args(["export", "--model", "mobilenetv4_conv_small", "--out", "m.onnx"])
    assert model_name(a) == model_name(b) == "mobilenetv4_conv_small"
    assert main(["export", "--random-weights", "--out", "m.onnx"]) == 2  # no model: one line, nothing written
    assert "name the model with --model" in capsys.readouterr().err
    for command in (["roofline"], ["export"], ["detect", "train"], ["segment", "train"], ["train"], ["eval"],
                    ["predict"]):
        with_help = []
        try:
            main([*command, "--help"])
        except SystemExit:
            with_help = capsys.readouterr().out
        positionals = [line for line in with_help.splitlines() if line.startswith("  MODEL")]
        assert "--model" in with_help and "--backbone" not in with_help and "[MODEL]" not in with_help, command
        assert not positionals, command
