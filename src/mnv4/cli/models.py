"""``mnv4 models``: every variant with its parameters, MACs and native resolution."""

from __future__ import annotations

import argparse
import json

from ..errors import UserError
from ._common import SIZE


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "models",
        help="table of all variants: params, MACs, native resolution",
        description="List every MobileNetV4 variant with its parameter count and MACs at its native resolution. "
        "MACs count convs, linears and the two attention matmuls of each Mobile MQA block (shown separately); "
        "BN, activations, pooling and softmax are not counted. 1 MAC = 2 FLOPs.",
    )
    p.add_argument("pattern", nargs="?", default="*", help="shell-style filter, e.g. '*hybrid*', or a spec file")
    p.add_argument("--resolution", type=SIZE, default=None, help="count MACs at this size instead of the native one")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def model_table(pattern: str = "*", resolution: int | None = None) -> list[dict]:
    """One dict per variant: name, description, resolution, params, macs, attention_macs, top1, source."""
    from ..analysis import count_params, profile_layers
    from ..factory import create_model, list_models
    from ..specs import MODEL_SPECS, is_spec_file

    matching = set(list_models(pattern))
    names = [name for name in MODEL_SPECS if name in matching]  # the five paper models first, then the extras
    if is_spec_file(pattern):  # one spec file (e.g. from `mnv4 search`)
        names = [pattern]
    if not names:
        raise UserError(f"no model matches {pattern!r}; see `mnv4 models` for the names")
    rows = []
    for name in names:
        model = create_model(name)
        res = resolution or model.spec.resolution
        prof = profile_layers(model, (res, res))
        rows.append(
            {
                "name": model.spec.name,
                "description": model.spec.description,
                "resolution": res,
                "params": count_params(model),
                "macs": sum(r.macs for r in prof),
                "attention_macs": sum(r.macs for r in prof if r.kind == "attention"),
                "top1": model.spec.top1,
                "source": model.spec.source,
            }
        )
    return rows


def run(args: argparse.Namespace) -> int:
    rows = model_table(args.pattern, args.resolution)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    header = (
        f"{'model':30s} {'variant':20s} {'res':>4s} {'params':>12s} {'GMACs':>7s} {'attn MMACs':>10s} {'top-1':>6s}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        top1 = f"{r['top1']:.1f}" if r["top1"] else "-"
        attn = f"{r['attention_macs'] / 1e6:.1f}" if r["attention_macs"] else "-"
        print(
            f"{r['name']:30s} {r['description']:20s} {r['resolution']:>4d} {r['params']:>12,d} "
            f"{r['macs'] / 1e9:>7.3f} {attn:>10s} {top1:>6s}"
        )
    print(
        "\nMACs: convs + linears + Mobile MQA attention matmuls (the 'attn' column, included in GMACs), one image "
        "at 'res'. top-1: ImageNet-1k, paper Tab. 6 (IN-1k training only)."
    )
    return 0
