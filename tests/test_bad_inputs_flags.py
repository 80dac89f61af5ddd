"""Every numeric flag of every command that is not a run-config field (those: ``test_bad_inputs_runs.py``,
``test_bad_inputs_train.py``) refuses a number outside its range, NaN and infinity, through one shared parser type
(``mnv4.cli._common.number``): one line on stderr (``mnv4 CMD: error: --flag must be ...``), exit code 2, before any
file is read or written. So do a flag that is not a number and a flag that does not exist (argparse's usage block is
not printed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mnv4.cli import main

# Paths in the command lines below do not exist: the flag is refused before anything is read.
WEIGHTS = ["--weights", "WEIGHTS.safetensors"]
CALIB = ["--int8", "--calib", "CALIB"]

CASES = {
    # id: (command line, expected words); OUT is a path under the test's empty folder
    "detect eval --score-thresh 1.5": (["detect", "eval", *WEIGHTS, "--annotations", "A.json", "--images", "I",
                                        "--score-thresh", "1.5"], "--score-thresh must be in [0, 1], got 1.5"),
    "detect eval --score-thresh nan": (["detect", "eval", *WEIGHTS, "--annotations", "A.json", "--images", "I",
                                        "--score-thresh", "nan"], "--score-thresh must be a finite number"),
    "detect eval --batch-size 0": (["detect", "eval", *WEIGHTS, "--annotations", "A.json", "--images", "I",
                                    "--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    "detect eval --workers -1": (["detect", "eval", *WEIGHTS, "--annotations", "A.json", "--images", "I",
                                  "--workers", "-1"], "--workers must be >= 0, got -1"),
    "detect predict --score-thresh -0.1": (["detect", "predict", "x.png", *WEIGHTS, "--out", "OUT",
                                            "--score-thresh", "-0.1"], "--score-thresh must be in [0, 1]"),
    "detect predict --score-thresh inf": (["detect", "predict", "x.png", *WEIGHTS, "--out", "OUT",
                                           "--score-thresh", "inf"], "--score-thresh must be a finite number"),
    "detect export --tolerance nan": (["detect", "export", *WEIGHTS, "--out", "OUT/d.onnx", "--tolerance", "nan"],
                                      "--tolerance must be a finite number"),
    "detect export --tolerance -1": (["detect", "export", *WEIGHTS, "--out", "OUT/d.onnx", "--tolerance", "-1"],
                                     "--tolerance must be >= 0"),
    "detect export --opset 5": (["detect", "export", *WEIGHTS, "--out", "OUT/d.onnx", "--opset", "5"],
                                "--opset must be >= 17"),
    "eval --batch-size 0": (["eval", "--data", "D", "--batch-size", "0"], "--batch-size must be >= 1"),
    "eval --workers -1": (["eval", "--data", "D", "--workers", "-1"], "--workers must be >= 0"),
    "predict --topk 0": (["predict", "x.png", "--topk", "0"], "--topk must be >= 1"),
    "predict --crop-pct nan": (["predict", "x.png", "--crop-pct", "nan"], "--crop-pct must be a finite number"),
    "predict --crop-pct 0": (["predict", "x.png", "--crop-pct", "0"], "--crop-pct must be in (0, 1]"),
    "predict --img-size 0": (["predict", "x.png", "--img-size", "0"], "--img-size must be >= 32"),
    "predict --topk x": (["predict", "x.png", "--topk", "x"], "--topk: expected an integer, got 'x'"),
    "predict --no-such-flag": (["predict", "x.png", "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    "export --tolerance nan": (["export", "mobilenetv4_conv_small", "--random-weights", "--out", "OUT/e.onnx",
                               "--tolerance", "nan"], "--tolerance must be a finite number"),
    "export --tolerance inf": (["export", "mobilenetv4_conv_small", "--random-weights", "--out", "OUT/e.onnx",
                               "--tolerance", "inf"], "--tolerance must be a finite number"),
    "export --min-sqnr nan": (["export", "mobilenetv4_conv_small", "--random-weights", "--out", "OUT/e.onnx", *CALIB,
                              "--min-sqnr", "nan"], "--min-sqnr must be a finite number"),
    "export --min-agreement 2": (["export", "mobilenetv4_conv_small", "--random-weights", "--out", "OUT/e.onnx",
                                  *CALIB, "--min-agreement", "2"], "--min-agreement must be in [0, 1]"),
    "export --num-classes 0": (["export", "mobilenetv4_conv_small", "--random-weights", "--out", "OUT/e.onnx",
                                "--num-classes", "0"], "--num-classes must be >= 1"),
    "export --calib-images 0": (["export", "mobilenetv4_conv_small", "--random-weights", "--out", "OUT/e.onnx",
                                 *CALIB, "--calib-images", "0"], "--calib-images must be >= 1"),
    "export --size 0 0": (["export", "mobilenetv4_conv_small", "--random-weights", "--out", "OUT/e.onnx",
                           "--size", "0", "0"], "--size must be >= 32"),
    "bench --max-seconds inf": (["bench", "--quick", "--out", "OUT", "--max-seconds", "inf"],
                                "--max-seconds must be a finite number"),
    "bench --warmup -1": (["bench", "--quick", "--out", "OUT", "--warmup", "-1"], "--warmup must be >= 0"),
    "bench --cuda-batch-sizes 1,0": (["bench", "--quick", "--out", "OUT", "--cuda-batch-sizes", "1,0"],
                                     "--cuda-batch-sizes must be >= 1, got 0"),
    "roofline --top -1": (["roofline", "--model", "mobilenetv4_conv_small", "--top", "-1"], "--top must be >= 0"),
    "roofline --rp nan": (["roofline", "--model", "mobilenetv4_conv_small", "--rp", "nan"],
                          "--rp must be a finite number"),
    "roofline --max-rp inf": (["roofline", "--sweep", "--max-rp", "inf", "--out", "OUT/r.png"],
                              "--max-rp must be a finite number"),
    "models --resolution 0": (["models", "--resolution", "0"], "--resolution must be >= 32"),
    "ablate --runs 0": (["ablate", "--quick", "--json", "OUT/a.json", "--runs", "0"], "--runs must be >= 1"),
    "ablate --rounds 0": (["ablate", "--quick", "--json", "OUT/a.json", "--rounds", "0"], "--rounds must be >= 1"),
    "ablate --warmup -1": (["ablate", "--quick", "--json", "OUT/a.json", "--warmup", "-1"], "--warmup must be >= 0"),
    "segment eval --workers -1": (["segment", "eval", *WEIGHTS, "--images", "I", "--masks", "M", "--workers", "-1"],
                                  "--workers must be >= 0"),
    "segment export --tolerance nan": (["segment", "export", *WEIGHTS, "--out", "OUT/s.onnx", "--tolerance", "nan"],
                                       "--tolerance must be a finite number"),
    "segment export --min-sqnr inf": (["segment", "export", *WEIGHTS, "--out", "OUT/s.onnx", *CALIB, "--min-sqnr",
                                       "inf"], "--min-sqnr must be a finite number"),
    "segment export --check-images 0": (["segment", "export", *WEIGHTS, "--out", "OUT/s.onnx", "--check-images",
                                         "0"], "--check-images must be >= 1"),
    "segment models --num-classes 1": (["segment", "models", "--num-classes", "1"], "--num-classes must be >= 2"),
    "search --validate-cost 5": (["search", "--space", "tiny", "--out", "OUT", "--validate-cost", "5"],
                                 "--validate-cost must be >= 30"),
    "train --replicas 0": (["train", "--data", "D", "--out", "OUT", "--precompute-soft-labels", "OUT/s.safetensors",
                            "--replicas", "0"], "--replicas must be >= 1"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_numeric_flags_are_range_checked_by_the_parser(case, tmp_path, capsys):
    args, expected = CASES[case]
    args = [a.replace("OUT", str(tmp_path / "out")) for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err
    command = "mnv4" if "unrecognized" in expected else f"mnv4 {args[0]}"  # the top parser reports unknown flags
    assert err.startswith(f"{command}: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert "usage:" not in err and expected in err, err
    assert "--help" in err  # where the flags are listed
    assert list(Path(tmp_path).iterdir()) == []


def test_python_m_entry_names_itself_in_a_parse_error(capsys):
    from mnv4.cli.train import main as train_main

    assert train_main(["--replicas", "-3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mnv4.train: error: --replicas must be >= 1, got -3") and err.count("\n") == 1, err


def test_library_export_config_refuses_non_finite_thresholds(tmp_path):
    """The same limits for API callers of ``ExportConfig`` (no parser in between)."""
    from mnv4.errors import UserError
    from mnv4.export.pipeline import ExportConfig

    with pytest.raises(UserError, match="--tolerance must be a finite number >= 0, got nan"):
        ExportConfig(format="onnx", out=tmp_path / "m.onnx", tolerance=float("nan")).validate()
    calib = tmp_path / "calib"
    calib.mkdir()
    with pytest.raises(UserError, match="--min-sqnr must be a finite number of dB, got inf"):
        ExportConfig(format="onnx", out=tmp_path / "m.onnx", precision="int8", calib=calib,
                     min_sqnr_db=float("inf")).validate()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calib"]


@pytest.mark.parametrize(("argv", "expected"), [
    (["roofline", "--sweep", "--models", "mobilenetv4_conv_small", "--out", "DIR"], "is a folder; give a file name"),
    (["roofline", "--sweep", "--models", "mobilenetv4_conv_small", "--out", "FILE/x.png"], "is a file, not a folder"),
    (["bench", "--quick", "--models", "mobilenetv4_conv_small", "--backends", "eager", "--out", "FILE/b"],
     "is a file, not a folder"),
    (["detect", "predict", "x.png", "--weights", "W.safetensors", "--out", "FILE"], "is a file; give a folder"),
])
def test_output_paths_are_checked_before_the_work(argv, expected, tmp_path, capsys):
    """These used to fail with a traceback when the first file was written: after the sweep, after the whole
    benchmark, after the detector ran."""
    (tmp_path / "DIR").mkdir()
    (tmp_path / "FILE").write_text("mine")
    argv = [str(tmp_path / a) if a.startswith(("DIR", "FILE")) else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err and "Traceback" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["DIR", "FILE"] and (tmp_path / "FILE").read_text() == "mine"
