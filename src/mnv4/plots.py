"""The two figures: the bench Pareto plot (paper Fig. 1, measured here) and the roofline sweep (paper Fig. 2 / App. F).

matplotlib is optional (``pip install 'mnv4[plot]'``) and imported only when a figure is drawn, with the Agg
backend (files only, no display needed).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

_MARKERS = "osD^v<>ph*"


def _pyplot():
    try:
        import matplotlib
    except ImportError as err:
        raise RuntimeError("plots need matplotlib: pip install 'mnv4[plot]' (or pass --no-plot)") from err
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def pareto_plot(report, path: str | Path, batch_size: int | None = None, title: str | None = None) -> Path:
    """Draw ``pareto_figure`` into a PNG at ``path``."""
    plt = _pyplot()
    fig = pareto_figure(report, batch_size, title)
    path = Path(path)
    try:
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path


def pareto_figure(report, batch_size: int | None = None, title: str | None = None):
    """Latency (x, log scale) vs published ImageNet top-1 (y), the paper's Fig. 1 measured here.

    One colour and marker per backend (the legend), with each backend's Pareto front as a line; MNv4 filled, the
    MobileNetV3 baselines hollow. A model's points share its top-1, so they sit on one row: the row is named once,
    left of its fastest point -- per-backend labels would pile onto each other. Models without a published top-1 are
    left out. Raises ``ValueError`` when nothing can be drawn.
    """
    from .bench.catalog import BASELINES

    plt = _pyplot()
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FormatStrFormatter, LogLocator

    batch_size = batch_size or int(report.config.get("batch_size", 1))
    drawn = [r for r in report.records if r.batch_size == batch_size and r.ok and r.top1 is not None]
    if not drawn:
        raise ValueError("nothing to plot: no successful measurement of a model with a published top-1")
    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=120)
    legend = []
    for i, backend in enumerate(report.backends):
        rows = [r for r in drawn if r.backend == backend]
        if not rows:
            continue
        color, marker = f"C{i % 10}", _MARKERS[i % len(_MARKERS)]
        front = pareto_front(rows)
        ax.plot([r.median_ms for r in front], [r.top1 for r in front], color=color, linewidth=1.2, alpha=0.8)
        legend.append(Line2D([], [], color=color, marker=marker, linewidth=1.2, label=backend))
        for baseline, style in ((False, dict(color=color)), (True, dict(facecolors="none", edgecolors=color))):
            points = [r for r in rows if (r.model in BASELINES) == baseline]
            if points:
                ax.scatter([r.median_ms for r in points], [r.top1 for r in points], marker=marker, s=45, zorder=3,
                           **style)
    for model in dict.fromkeys(r.model for r in drawn):
        fastest = min((r for r in drawn if r.model == model), key=lambda r: r.median_ms)
        ax.annotate(short_label(fastest.label), (fastest.median_ms, fastest.top1), textcoords="offset points",
                    xytext=(-7, 0), ha="right", va="center", fontsize=8,
                    bbox=dict(boxstyle="round,pad=0.15", facecolor="white", edgecolor="none", alpha=0.8))
    fastest_ms, slowest_ms = min(r.median_ms for r in drawn), max(r.median_ms for r in drawn)
    ax.set_xscale("log")
    ax.set_xlim(fastest_ms / 3, slowest_ms * 1.5)  # room left of the fastest point for its label
    ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.xaxis.set_minor_locator(LogLocator(base=10, subs=(2.0, 5.0)))
    ax.xaxis.set_minor_formatter(FormatStrFormatter("%g"))
    ax.tick_params(axis="x", which="minor", labelsize=7)
    ax.set_xlabel(f"median latency, ms (batch {batch_size}, this machine, log scale)")
    ax.set_ylabel("published ImageNet-1k top-1, %")
    ax.grid(True, which="both", alpha=0.3)
    key = "line: Pareto front per backend\nfilled: MNv4, hollow: MNv3\nname: at the model's fastest point"
    ax.legend(handles=legend, fontsize=8, loc="lower right", title=key, title_fontsize=7)
    env = report.environment
    where = f"{env.get('cpu', 'this machine')}, {env.get('threads', '?')} threads"
    if env.get("gpu"):
        where += f"; GPU {env['gpu']}"
    ax.set_title(title or f"Latency vs published accuracy, measured on {where}", fontsize=10)
    sources: dict[str, list[str]] = {}
    for r in drawn:
        sources.setdefault(r.top1_source, []).append(r.label)
    caption = "top-1 sources: " + "; ".join(
        f"{src} ({', '.join(dict.fromkeys(labels))})" for src, labels in sources.items())
    fig.text(0.01, 0.01, caption, fontsize=6, wrap=True)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return fig


def short_label(label: str) -> str:
    """A model's name on the plot: the catalog label without the "MNv4-" every MobileNetV4 shares."""
    return label.removeprefix("MNv4-")


def pareto_front(records):
    """The records no other record beats on both latency (lower) and top-1 (higher), fastest first."""
    front, best = [], float("-inf")
    for r in sorted(records, key=lambda r: (r.median_ms, -r.top1)):
        if r.top1 > best:
            front.append(r)
            best = r.top1
    return front


def sweep_plot(
    ridge_points: Sequence[float],
    curves: Mapping[str, Sequence[float]],
    normalised: Mapping[str, Sequence[float]],
    path: str | Path,
    reference_label: str,
    profiles: Mapping[str, float],
    precision: str,
) -> Path:
    """Left: effective GMACs (ModelTime x PeakMACs) vs RP; right: the same relative to ``reference_label``."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 5), dpi=120)
    for i, (label, values) in enumerate(curves.items()):
        left.plot(ridge_points, [v / 1e9 for v in values], color=f"C{i % 10}", label=label)
        right.plot(ridge_points, normalised[label], color=f"C{i % 10}", label=label)
    for ax in (left, right):
        for name, rp in profiles.items():
            ax.axvline(rp, color="gray", linestyle=":", linewidth=0.8)
            ax.text(rp, 0.02, f" {name}", rotation=90, va="bottom", ha="left", fontsize=7, color="gray",
                    transform=ax.get_xaxis_transform())
        ax.set_xlabel("ridge point, MACs/byte (0 = MAC count only)")
        ax.grid(True, alpha=0.3)
    left.set_yscale("log")
    left.set_ylabel("predicted time x PeakMACs (G effective MACs), log")
    left.set_title(f"Roofline-predicted latency ({precision} bytes)", fontsize=10)
    right.set_yscale("log")
    right.set_ylabel(f"predicted latency / {reference_label}'s at the same RP, log")
    right.set_title(f"Relative to {reference_label}: < 1 is faster", fontsize=10)
    right.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
