"""Spec files: any layer table as JSON, read back by create_model / get_spec, with one clear error when invalid."""

import json
from dataclasses import replace

import pytest

import mnv4
from mnv4.errors import UserError
from mnv4.specs import MODEL_SPECS, UIB, get_spec, load_spec, save_spec, spec_from_dict, spec_to_dict


@pytest.mark.parametrize("name", list(MODEL_SPECS))
def test_every_registered_table_round_trips_through_json(name):
    spec = MODEL_SPECS[name]
    assert spec_from_dict(json.loads(json.dumps(spec_to_dict(spec)))) == spec


def test_create_model_takes_a_spec_file(tmp_path):
    spec = replace(MODEL_SPECS["mobilenetv4_conv_small"], name="my_small", description="", top1=None)
    path = save_spec(spec, tmp_path / "my_small.json")
    model = mnv4.create_model(str(path), num_classes=10)
    ref = mnv4.create_model("mobilenetv4_conv_small", num_classes=10)
    assert model.spec == load_spec(path) == spec
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in ref.parameters())
    assert model.pretrained_cfg["input_size"] == (3, 224, 224) and model.pretrained_cfg["tag"] is None
    assert mnv4.data_config(str(path)).img_size == 224
    with pytest.raises(UserError, match="no released weights"):
        mnv4.create_model(str(path), pretrained=True)


def _bad(tmp_path, data):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return str(path)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: "{not json", "not a JSON spec file"),
        (lambda d: {k: v for k, v in d.items() if k != "stages"}, "missing field"),
        (lambda d: {**d, "colour": "red"}, "unknown field"),
        (lambda d: {**d, "stages": [[{"type": "Bogus"}]]}, "'type' one of"),
        (lambda d: {**d, "stages": d["stages"][:-2] + [d["stages"][-1]]}, "downsample by 32"),
        (lambda d: {**d, "stages": [*d["stages"][:-1], [{"type": "UIB", "start_dw": 4, "mid_dw": 0, "expand": 4,
                                                          "out": 960, "stride": 1}]]}, "start_dw must be"),
        (lambda d: {**d, "name": "mobilenetv4_conv_medium"}, "registered variant"),
    ],
)
def test_invalid_spec_files_raise_one_user_error(tmp_path, mutate, message):
    data = spec_to_dict(replace(MODEL_SPECS["mobilenetv4_conv_small"], name="custom"))
    with pytest.raises(UserError, match=message):
        get_spec(_bad(tmp_path, mutate(data)))


def test_strided_ffn_and_missing_file_are_user_errors(tmp_path):
    spec = MODEL_SPECS["mobilenetv4_conv_small"]
    stages = (*spec.stages[:2], (UIB(0, 0, 3, 96, stride=2), *spec.stages[2][1:]), *spec.stages[3:])
    with pytest.raises(UserError, match="strided UIB"):
        save_spec(replace(spec, name="custom", stages=stages), tmp_path / "x.json")
    with pytest.raises(UserError, match="does not exist"):
        get_spec(str(tmp_path / "missing.json"))
