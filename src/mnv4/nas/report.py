"""What a search leaves behind: the spec file, the table in ``specs.py`` syntax, a summary, the history and a plot."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
from pathlib import Path

from ..layers import make_divisible
from ..specs import UIB, Conv, FusedIB, ModelSpec, save_spec


def _row_python(row, in_ch: int) -> tuple[str, str]:
    """A row in ``specs.py`` syntax and its comment (block kind and expanded width, as the paper tables print)."""
    stride = ", stride=2" if row.stride == 2 else ""
    if isinstance(row, UIB):
        return f"UIB({row.start_dw}, {row.mid_dw}, {row.expand}, {row.out}{stride}),", \
            f"{row.kind:8s} {make_divisible(in_ch * row.expand)}"
    if isinstance(row, FusedIB):
        expanded = make_divisible(in_ch * row.expand)
        return f"FusedIB({row.kernel}, {row.expand}, {row.out}{stride}),", f"expanded {expanded}"
    if isinstance(row, Conv):
        return f"Conv({row.kernel}, {row.out}{stride}),", ""
    return f"{row!r},", ""


def spec_as_python(spec: ModelSpec, variable: str = "FOUND") -> str:
    """``spec`` as a ``specs.py`` table (paste it there to register the architecture as a variant)."""
    lines = [f"{variable} = ModelSpec(", f"    name={spec.name!r},"]
    if spec.description:
        lines.append(f"    description={spec.description!r},")
    lines.append(f"    source={spec.source!r},")
    lines += [f"    stem={spec.stem},", f"    resolution={spec.resolution},"]
    if spec.act != "relu":
        lines.append(f"    act={spec.act!r},")
    if spec.head_hidden != 1280:
        lines.append(f"    head_hidden={spec.head_hidden},")
    lines.append("    stages=_stages(")
    in_ch, size = spec.stem, spec.resolution // 2
    for stage in spec.stages:
        lines.append(f"        [   # {size} px in.")
        for row in stage:
            code, comment = _row_python(row, in_ch)
            lines.append(f"            {code:34s}# {comment}".rstrip(" #") if comment else f"            {code}")
            in_ch, size = row.out, size // row.stride
        lines.append("        ],")
    lines += ["    ),", ")"]
    return "\n".join(lines)


def format_probabilities(probabilities: dict[str, dict[str, float]]) -> str:
    """One line per decision: every choice with its probability, the chosen (most likely) one marked."""
    lines = []
    for name, probs in probabilities.items():
        best = max(probs, key=probs.get)
        cells = "  ".join(f"{'*' if c == best else ' '}{c}: {p:.3f}" for c, p in probs.items())
        lines.append(f"  {name:16s} {cells}")
    return "\n".join(lines)


HISTORY_FIELDS = ("step", "stage", "loss", "quality", "cost", "reward", "step_baseline", "baseline", "advantage",
                  "entropy", "lr", "rl_lr", "warmup_prob")


def write_history(history: list[dict], path: Path) -> Path:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=HISTORY_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(history)
    os.replace(tmp, path)
    return path


def plot_history(history: list[dict], target: float, path: Path, title: str = "") -> Path:
    """Reward (and baseline), cost / T0 and the controller's entropy over the search; stages separated."""
    from ..plots import _pyplot

    plt = _pyplot()
    steps = [row["step"] for row in history]
    fig, axes = plt.subplots(3, 1, figsize=(8, 7.5), dpi=110, sharex=True)
    axes[0].plot(steps, [r["reward"] for r in history], ".", ms=2, alpha=0.35, label="reward")
    axes[0].plot(steps, [r["baseline"] for r in history], "-", lw=1.2, label="baseline (EMA)")
    axes[0].set_ylabel("reward")
    axes[0].legend(loc="lower right")
    axes[1].plot(steps, [r["cost"] / target for r in history], ".", ms=2, alpha=0.35)
    axes[1].axhline(1.0, color="k", lw=0.8, ls="--")
    axes[1].set_ylabel("cost / T0")
    axes[2].plot(steps, [r["entropy"] for r in history], "-", lw=1.2)
    axes[2].set_ylabel("entropy (nats)")
    axes[2].set_xlabel("step")
    for i in range(1, len(history)):
        if history[i]["stage"] != history[i - 1]["stage"]:
            for ax in axes:
                ax.axvline(steps[i], color="grey", lw=0.8)
            axes[0].text(steps[i], axes[0].get_ylim()[1], f" {history[i]['stage']}", va="top", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_outputs(result, cfg, out: Path) -> dict[str, Path]:
    """The spec file, ``search.json`` (summary), ``history.csv`` and ``search.png`` (when matplotlib is there)."""
    from ..specs import spec_to_dict

    files = {"spec": save_spec(result.spec, out / f"{result.spec.name}.json")}
    summary = {
        "spec": spec_to_dict(result.spec),
        "cost": result.cost,
        "target": result.target,
        "cost_ratio": result.cost / result.target,
        "cost_model": result.cost_name,
        "cost_unit": result.cost_unit,
        "resolution": result.resolution,
        "stages": [s.to_dict() for s in result.stages],
        "config": cfg.to_dict(),
    }
    files["summary"] = out / "search.json"
    files["summary"].write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    files["history"] = write_history(result.history, out / "history.csv")
    if cfg.plot and result.history and importlib.util.find_spec("matplotlib") is not None:  # optional
        files["plot"] = plot_history(result.history, result.target, out / "search.png",
                                     f"{result.spec.name}: T0 = {result.target:.4g} {result.cost_unit}")
    return files
