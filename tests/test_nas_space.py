"""The search space as data: every point decodes to a valid ModelSpec, and the paper's Conv-S/M/L are points of the
space of their size (encode -> decode gives the specs.py table back, with the same parameter count)."""

from dataclasses import replace

import pytest
import torch

import mnv4
from mnv4.analysis import count_params
from mnv4.errors import UserError
from mnv4.nas.space import COARSE_BLOCK, SPACES, get_space
from mnv4.specs import MODEL_SPECS, UIB, validate_spec

PAPER = {"conv_small": "mobilenetv4_conv_small", "conv_medium": "mobilenetv4_conv_medium",
         "conv_large": "mobilenetv4_conv_large"}


@pytest.mark.parametrize("space_name", list(PAPER))
def test_paper_model_is_a_point_of_its_space(space_name):
    space, ref = SPACES[space_name], MODEL_SPECS[PAPER[space_name]]
    assert space.reference == ref.name and space.resolution == ref.resolution
    arch = space.encode(ref)
    decoded = space.decode(arch, name="round_trip")
    assert decoded.stages == ref.stages
    assert (decoded.stem, decoded.act, decoded.head_hidden, decoded.resolution) == (
        ref.stem, ref.act, ref.head_hidden, ref.resolution)
    with torch.device("meta"):  # parameter counts need shapes only
        assert count_params(mnv4.create_model(decoded)) == count_params(mnv4.create_model(ref.name))
    # the fixed parts are the model's own: Conv-S four Conv rows in two stages, Conv-M/L one FusedIB
    assert space.fixed == ref.stages[: len(space.fixed)]
    assert len(space.fixed) == (2 if space_name == "conv_small" else 1)


@pytest.mark.parametrize("space_name", list(SPACES))
def test_random_points_decode_to_valid_specs_and_encode_back(space_name):
    space = SPACES[space_name]
    generator = torch.Generator().manual_seed(0)
    for _ in range(25):
        arch = space.random(generator)
        spec = space.decode(arch)
        validate_spec(spec)
        again = space.encode(spec)
        assert space.decode(again) == spec
        # the decisions that matter round-trip exactly; those of absent blocks are reset to IB e4 k3
        active = space.active(arch)
        assert [a for a, on in zip(arch, active, strict=True) if on] == [
            a for a, on in zip(again, active, strict=True) if on]
        for i, d in enumerate(space.decisions):
            if not active[i]:
                assert d.choices[again[i]] == COARSE_BLOCK[d.kind]


def test_largest_and_coarse_points():
    space = SPACES["tiny"]
    spec = space.decode(space.largest())
    assert [len(s) for s in spec.stages[1:-1]] == [max(s.depths) for s in space.stages]
    assert all(r.out == max(st.widths) and r.expand == max(st.expansions) and r.mid_dw == 5
               for rows, st in zip(spec.stages[1:-1], space.stages, strict=True) for r in rows)
    coarse = space.decode(space.coarse_blocks(space.largest()))
    assert all(isinstance(r, UIB) and (r.start_dw, r.mid_dw, r.expand) == (0, 3, 4)
               for rows in coarse.stages[1:-1] for r in rows)


def test_strided_first_block_always_keeps_its_middle_dw():
    for space in SPACES.values():
        for d in space.decisions:
            if d.kind == "mid_dw" and d.block == 0:
                assert 0 not in d.choices, d.name


@pytest.mark.parametrize(
    "spec, space_name, message",
    [
        (MODEL_SPECS["mobilenetv4_hybrid_medium"], "conv_medium", "layer scale"),
        (MODEL_SPECS["mobilenetv4_conv_small"], "conv_medium", "stem width|stages"),
        (MODEL_SPECS["mobilenetv4_conv_small_050"], "conv_small", "width multipliers"),
    ],
)
def test_specs_outside_the_space_are_user_errors(spec, space_name, message):
    with pytest.raises(UserError, match=message):
        SPACES[space_name].encode(spec)


def test_a_width_or_kernel_not_among_the_choices_is_named():
    ref = MODEL_SPECS["mobilenetv4_conv_medium"]
    space = SPACES["conv_medium"]
    wider = tuple(tuple(replace(r, out=84) for r in rows) if i == 1 else rows for i, rows in enumerate(ref.stages))
    with pytest.raises(UserError, match=r"s0.width = 84 is not one of"):
        space.encode(replace(ref, name="x", stages=wider))
    seven = tuple(tuple(replace(r, start_dw=7) if i == 2 and j == 1 else r for j, r in enumerate(rows))
                  for i, rows in enumerate(ref.stages))
    with pytest.raises(UserError, match=r"s1.b1.start_dw = 7"):
        space.encode(replace(ref, name="x", stages=seven))
    assert not space.contains(replace(ref, name="x", stages=seven)) and space.contains(ref)


def test_unknown_space_is_a_user_error():
    with pytest.raises(UserError, match="unknown search space 'conv_huge'.*conv_small"):
        get_space("conv_huge")
