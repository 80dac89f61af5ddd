"""Bad input: one clear error each, saying what was wrong and what to do."""

import pytest
import torch

import mnv4
from mnv4.cli import main


def test_unknown_model_names_the_closest():
    with pytest.raises(ValueError, match=r"unknown model 'mobilenetv4_conv_smal'.*'mobilenetv4_conv_small'"):
        mnv4.create_model("mobilenetv4_conv_smal")
    with pytest.raises(ValueError, match="hybrid_medium"):
        mnv4.create_model("mnv4_hybrid_medum")


def test_wrong_channel_count():
    model = mnv4.create_model("mobilenetv4_conv_small").eval()
    with pytest.raises(ValueError, match="expects 3 input channels, got 1.*in_chans=1"):
        model(torch.randn(1, 1, 64, 64))
    with pytest.raises(ValueError, match="NHWC"):
        model(torch.randn(1, 64, 64, 3))


def test_input_smaller_than_32px():
    model = mnv4.create_model("mobilenetv4_hybrid_medium").eval()
    with pytest.raises(ValueError, match="smaller than 32 px"):
        model(torch.randn(1, 3, 31, 64))
    with pytest.raises(ValueError, match="4-D"):
        model(torch.randn(3, 64, 64))


def test_train_mode_batch_one_explains_batchnorm_after_pooling():
    model = mnv4.create_model("mobilenetv4_conv_small").train()
    with pytest.raises(ValueError, match="batch size 1 in train mode.*after global pooling.*model.eval"):
        model(torch.randn(1, 3, 64, 64))
    model.eval()
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 1000)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"drop_rate": -0.1}, "drop_rate"),
        ({"drop_rate": 1.0}, "drop_rate"),
        ({"drop_path_rate": -1}, "drop_path_rate"),
        ({"drop_path_rate": float("nan")}, "drop_path_rate"),
        ({"drop_path_rate": "0.1"}, "drop_path_rate"),
        ({"num_classes": -1}, "num_classes"),
        ({"in_chans": 0}, "in_chans"),
        ({"attn_impl": "flash"}, "attn_impl"),
        ({"features_only": True, "out_indices": (5,)}, "out_indices"),
        ({"out_indices": (1,)}, "features_only"),
    ],
)
def test_invalid_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        mnv4.create_model("mobilenetv4_conv_small", **kwargs)


def test_cli_reports_bad_input_in_one_line(capsys):
    assert main(["models", "nothing*"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no model matches" in err[0]
