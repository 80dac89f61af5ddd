"""NAS cost models: the per-layer profile from the table equals the built network's, the roofline cost, the latency
table (what it stores, sums, keeps on disk) and the validation report. How well the costs predict latency is
statistical: benchmarks/nas_cost.py measures it."""

import json
from dataclasses import replace

import pytest
import torch

from mnv4.analysis import part_profile, profile_layers, profile_spec, spec_parts
from mnv4.errors import UserError
from mnv4.model import MobileNetV4
from mnv4.nas.cost import (
    CostModel,
    LatencyMeasurement,
    LatencyTableCost,
    random_architectures,
    roofline_cost,
    validate_cost,
)
from mnv4.roofline import NAMED_PROFILES, effective_macs, roofline_layers
from mnv4.specs import MODEL_SPECS, UIB, Conv, ModelSpec

# A network of six parts (stem, four strided rows, head): small enough to measure with ORT in a few seconds.
TINY = ModelSpec(
    name="tiny_cost_test", stem=8, resolution=64, head_hidden=32,
    stages=((Conv(3, 16, 2),), (UIB(3, 0, 2, 16, 2), UIB(3, 0, 2, 16)), (Conv(3, 24, 2),), (Conv(1, 24, 2),)),
)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on a loaded 2-core machine, two OpenMP threads that wait for each other make each small
    forward pass many times slower than one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", sorted(MODEL_SPECS))
def test_profile_spec_equals_profile_layers_on_every_variant(name):
    spec = MODEL_SPECS[name]
    model = MobileNetV4(spec)
    for size in [(64, 64), (96, 66)]:  # a non-square size with odd maps (rounding of strided convs and pools)
        assert profile_spec(spec, size) == profile_layers(model, size), size


@pytest.mark.parametrize("name", ["mobilenetv4_conv_small_035", "mobilenetv4_hybrid_medium"])
def test_profile_spec_input_channels_and_classes(name):
    # in_chans and num_classes change the stem conv and the classifier (0: none); a width < 1 keeps the stem
    spec = MODEL_SPECS[name]
    assert profile_spec(spec, 64, in_chans=1, num_classes=7) == profile_layers(
        MobileNetV4(spec, num_classes=7, in_chans=1), (64, 64))
    assert profile_spec(spec, 64, num_classes=0) == profile_layers(MobileNetV4(spec, num_classes=0), (64, 64))


def test_profile_spec_on_random_tables_and_parts_are_shared():
    specs = random_architectures(4, seed=3)
    for spec in specs:
        assert profile_spec(spec, 96) == profile_layers(MobileNetV4(spec), (96, 96)), spec.name
    # Equal rows at the same place in the pyramid are one cached part: the parts of all the tables, and the stem
    # and head of each, resolve to the same objects.
    parts = [p for spec in specs for _, p in spec_parts(spec, 96)]
    assert len(set(parts)) < len(parts)
    assert part_profile(parts[0]) is part_profile(replace(parts[0]))


def test_roofline_cost_is_the_roofline_of_the_built_network():
    spec = MODEL_SPECS["mobilenetv4_hybrid_medium"]
    layers = roofline_layers(profile_layers(MobileNetV4(spec), (128, 128)), "int8")
    for rp in [0.0, 12.5, *(v for v, _ in NAMED_PROFILES.values())]:
        assert roofline_cost(rp)(spec, 128) == pytest.approx(effective_macs(layers, rp), rel=1e-12)
    assert roofline_cost(0)(spec, 128) == sum(la.macs for la in layers)  # RP 0 is the MAC count
    fp32 = roofline_layers(profile_layers(MobileNetV4(spec), (128, 128)), "fp32")
    assert roofline_cost(100, "fp32")(spec, 128) == pytest.approx(effective_macs(fp32, 100), rel=1e-12)


def test_roofline_cost_names_and_bad_input():
    cost = roofline_cost("pixel8-edgetpu")
    assert isinstance(cost, CostModel)
    assert cost.ridge_point == NAMED_PROFILES["pixel8-edgetpu"][0]
    assert "pixel8-edgetpu" in cost.name and cost.unit == "effective MACs"
    assert roofline_cost("31.2").ridge_point == 31.2
    with pytest.raises(UserError, match="pixel6-cpu"):  # a did-you-mean hint
        roofline_cost("pixel6cpu")
    for bad in (-1.0, float("nan"), float("inf"), True, None):
        with pytest.raises(UserError):
            roofline_cost(bad)
    with pytest.raises(UserError, match="resolution"):
        cost(MODEL_SPECS["mobilenetv4_conv_small"], 16)


def test_random_architectures_are_valid_neighbours():
    a, b = random_architectures(6, seed=1), random_architectures(6, seed=1)
    assert a == b  # reproducible
    assert random_architectures(6, seed=2) != a
    bases = [MODEL_SPECS["mobilenetv4_conv_small"], MODEL_SPECS["mobilenetv4_conv_medium"]]
    for i, spec in enumerate(a):
        base = bases[i % 2]
        assert len(spec.stages) == len(base.stages) and spec.stages[0] == base.stages[0]  # fixed first stage
        assert spec.stages[-1] == base.stages[-1]  # fixed last conv
        assert spec.stages != base.stages
    with pytest.raises(UserError):
        random_architectures(0)


@pytest.fixture(scope="module")
def table_path(tmp_path_factory):
    return tmp_path_factory.mktemp("latency") / "table.json"


@pytest.fixture(scope="module")
def table(table_path):
    table = LatencyTableCost(table_path, threads=1, rounds=2, runs_per_round=3, warmup=1)
    torch.manual_seed(0)
    table(TINY, 64)  # measures all six parts
    return table


def test_latency_table_measures_each_part_once_and_sums(table, table_path):
    parts = spec_parts(TINY, 64)
    assert len(parts) == 7 and {p.key() for _, p in parts} == set(table.entries)
    for entry in table.entries.values():
        assert entry["ms"] > 0 and entry["null_ms"] > 0
    breakdown = table.breakdown(TINY, 64)
    assert [m for m, _, _ in breakdown] == ["stem", "blocks.0.0", "blocks.1.0", "blocks.1.1", "blocks.2.0",
                                            "blocks.3.0", "head"]
    # The sum: every part's time, with the fixed cost of one session.run taken off all parts but the stem (a whole
    # network pays it once), clamped at 0.
    expected = 0.0
    for _, part in parts:
        entry = table.entries[part.key()]
        expected += entry["ms"] if part.kind == "stem" else max(entry["ms"] - entry["null_ms"], 0.0)
    assert table(TINY, 64) == pytest.approx(expected)
    assert sum(ms for _, _, ms in breakdown) == pytest.approx(expected)
    raw = LatencyTableCost(table_path, threads=1, subtract_overhead=False, measure_missing=False)
    assert raw(TINY, 64) == pytest.approx(sum(table.entries[p.key()]["ms"] for _, p in parts))


def test_latency_table_is_kept_on_disk_per_runtime(table, table_path, monkeypatch):
    data = json.loads(table_path.read_text())
    assert data["format"] == "mnv4-latency-table/1" and list(data["tables"]) == [table.fingerprint]
    assert "1 threads" in table.fingerprint and "onnxruntime" in table.fingerprint

    def no_measuring(*args, **kwargs):
        raise AssertionError("a part in the file was measured again")

    monkeypatch.setattr(LatencyTableCost, "_export_parts", no_measuring)
    again = LatencyTableCost(table_path, threads=1)
    assert again(TINY, 64) == pytest.approx(table(TINY, 64))
    # A part not in the table is refused when measuring is not allowed.
    strict = LatencyTableCost(table_path, threads=1, measure_missing=False)
    with pytest.raises(UserError, match="not in the latency table"):
        strict(TINY, 96)
    other = LatencyTableCost(table_path, threads=2, measure_missing=False)  # another runtime setting: its own table
    assert other.entries == {}


def test_latency_table_bad_file(tmp_path):
    bad = tmp_path / "t.json"
    bad.write_text("{not json")
    with pytest.raises(UserError, match="not readable JSON"):
        LatencyTableCost(bad)
    assert bad.read_text() == "{not json"  # nothing overwritten
    bad.write_text(json.dumps({"format": "something else"}))
    with pytest.raises(UserError, match="not a latency table"):
        LatencyTableCost(bad)
    with pytest.raises(UserError, match="threads"):
        LatencyTableCost(tmp_path / "x.json", threads=0)


def test_validate_cost_compares_costs_with_measurement(table):
    deeper = replace(TINY, name="tiny_deeper",  # two equal blocks at the same size: one table entry
                     stages=(TINY.stages[0], TINY.stages[1] + (UIB(3, 3, 2, 16),) * 2, *TINY.stages[2:]))
    specs = [TINY, replace(TINY, name="tiny_wider", stem=16), deeper]
    costs = [roofline_cost(0), roofline_cost("pixel6-cpu"), table]
    result = validate_cost(costs, specs, 64, rounds=2, runs_per_round=1)  # real end-to-end ORT timing
    keys = {p.key() for spec in specs for _, p in spec_parts(spec, 64)}
    assert keys == set(table.entries)
    assert len([1 for _, p in spec_parts(deeper, 64) if p.key() == spec_parts(deeper, 64)[4][1].key()]) == 2
    assert result.names == tuple(s.name for s in specs)
    assert all(ms > 0 and lo <= ms <= hi for ms, (lo, hi) in zip(result.measured_ms, result.spread_ms, strict=True))
    assert result.predicted[0] == tuple(float(roofline_cost(0)(s, 64)) for s in specs)
    assert result.predicted[2] == tuple(table(s, 64) for s in specs)
    assert set(result.spearman) == {c.name for c in costs}
    assert all(-1.0 <= rho <= 1.0 for rho in result.spearman.values())
    text = str(result)
    assert "Spearman" in text and all(s.name in text for s in specs)
    # Given measurements are used as they are: latencies in the MAC order correlate +1, in the reverse order -1.
    macs = [roofline_cost(0)(s, 64) for s in specs]
    assert len(set(macs)) == 3
    for sign in (1.0, -1.0):
        given = LatencyMeasurement("given", tuple(sign * m / 1e6 for m in macs), ((0.0, 0.0),) * 3)
        rho = validate_cost(roofline_cost(0), specs, 64, measured=given).spearman["roofline RP 0 int8"]
        assert rho == pytest.approx(sign)
    with pytest.raises(UserError, match="at least 3"):
        validate_cost(roofline_cost(0), specs[:2], 64, measured=given)
    with pytest.raises(UserError, match="latencies for"):
        validate_cost(roofline_cost(0), specs + [replace(TINY, name="tiny_4")], 64, measured=given)
    with pytest.raises(UserError, match="cost models"):
        validate_cost([], specs, 64, measured=given)
