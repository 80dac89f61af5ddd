"""Does the supernet rank architectures the way training them does? The weight-sharing diagnostic, and the
statistics that compare a search with random architectures.

A supernet's accuracy for an architecture (``path_accuracy``) is measured the honest way: its path's weights are
copied into a stand-alone model (``SuperNet.extract``), the BN running statistics are re-estimated on training images
for that path alone (the supernet's own statistics mix every path it ran; Yu et al., ICLR 2020, and the "BN
recalibration" of single-path one-shot NAS), and the model is scored on held-out images. Kendall's tau between these
accuracies and the architectures' stand-alone top-1 is the standard diagnostic (Yu et al. 2020: often ~0 for weight
sharing; Bender et al., CVPR 2020). Intervals are percentile bootstraps, so that a tau or a difference of medians
comes with what a different draw of architectures would have given.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from .space import Arch, SearchSpace, get_space
from .supernet import SuperNet

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


# --------------------------------------------------------------------------------------------- supernet accuracy
@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable[torch.Tensor]) -> nn.Module:
    """Replace every BN layer's running statistics with their plain average over ``batches`` (images only) in train
    mode; the model is left in eval mode."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the calibration batches
    model.train()
    seen = 0
    for images in batches:
        model(images)
        seen += 1
    for bn, momentum in zip(bns, saved, strict=True):
        bn.momentum = momentum
    if seen == 0:
        raise ValueError("BN recalibration needs at least one batch of images")
    return model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, batches: Batches) -> dict[str, float]:
    """Top-1 (%) and mean cross-entropy of ``model`` (in its current mode) over ``batches``, and the image count."""
    correct, loss, count = 0, 0.0, 0
    for images, labels in batches:
        logits = model(images).float()
        correct += int((logits.argmax(1) == labels).sum())
        loss += float(F.cross_entropy(logits, labels, reduction="sum"))
        count += len(labels)
    if count == 0:
        raise ValueError("no images to score")
    return {"top1": 100.0 * correct / count, "loss": loss / count, "images": count}


def path_accuracy(supernet: SuperNet, arch: Arch, calibration: Iterable[torch.Tensor], evaluation: Batches,
                  recalibrate: bool = True) -> dict[str, float]:
    """The supernet's held-out accuracy of ``arch``: inherited weights in a stand-alone model, its BN statistics
    re-estimated on ``calibration`` images (``recalibrate=False``: the supernet's running ones), scored on
    ``evaluation``. The supernet is not modified."""
    model = supernet.extract(arch)
    if recalibrate:
        recalibrate_bn(model, calibration)
    return accuracy(model.eval(), evaluation)


def supernet_from_search(out: str | Path, num_classes: int, space: str | SearchSpace | None = None) -> SuperNet:
    """The supernet of a search's last checkpoint in ``out`` (a checkpoint file or the search's folder): the
    weights and BN statistics its last stage ended with. ``space`` defaults to the one the search ran."""
    from ..engine.checkpoint import list_checkpoints, load_checkpoint
    from .search import upgrade_checkpoint

    out = Path(out)
    path = out if out.is_file() else (list_checkpoints(out) or [None])[-1]
    if path is None:
        raise UserError(f"{out} holds no search checkpoint (ckpt-*.pt): run mnv4 search --out {out} first")
    state = upgrade_checkpoint(load_checkpoint(path, entry="learner", kind="mnv4 search"))
    supernet = SuperNet(get_space(space or state["config"]["space"]), num_classes)
    supernet.load_state_dict(state["model"])
    return supernet


def rank_paths(supernet: SuperNet, archs: Sequence[Arch], calibration: Sequence[torch.Tensor],
               evaluation: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> list[dict[str, float]]:
    """``path_accuracy`` of every architecture (the batches are reused: pass lists, not iterators)."""
    return [path_accuracy(supernet, arch, calibration, evaluation) for arch in archs]


# --------------------------------------------------------------------------------------------- statistics
def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b of two paired samples (ties in either count as neither concordant nor discordant, and shrink
    the denominator); NaN when one sample is constant."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"kendall_tau needs two paired 1-D samples, got shapes {x.shape} and {y.shape}")
    i, j = np.triu_indices(len(x), 1)
    dx, dy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
    pairs_x, pairs_y = np.count_nonzero(dx), np.count_nonzero(dy)
    if pairs_x == 0 or pairs_y == 0:
        return math.nan
    return float((dx * dy).sum() / math.sqrt(pairs_x * pairs_y))


def bootstrap_interval(statistic: Callable[..., float], *samples: Sequence[float], paired: bool = True,
                       level: float = 0.9, resamples: int = 4000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic(*samples)``. ``paired``: the samples are columns of one table
    and are resampled together (rows, e.g. architectures for a tau); otherwise each is resampled on its own (e.g.
    found-model seeds and random architectures). Resamples whose statistic is NaN are dropped."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    arrays = [np.asarray(s, dtype=np.float64) for s in samples]
    if paired and len({len(a) for a in arrays}) != 1:
        raise ValueError("paired samples must have the same length")
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(resamples):
        if paired:
            rows = rng.integers(0, len(arrays[0]), len(arrays[0]))
            drawn = [a[rows] for a in arrays]
        else:
            drawn = [a[rng.integers(0, len(a), len(a))] for a in arrays]
        value = statistic(*drawn)
        if not math.isnan(value):
            values.append(value)
    if not values:
        return math.nan, math.nan
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def percentile_of(value: float, population: Sequence[float]) -> float:
    """Where ``value`` falls among ``population``, in percent: the share below it plus half the share equal to it
    (the mid-rank convention, so the median of an odd sample is its own 50th percentile)."""
    population = np.asarray(population, dtype=np.float64)
    if population.size == 0:
        raise ValueError("an empty population has no percentiles")
    below, equal = np.count_nonzero(population < value), np.count_nonzero(population == value)
    return float(100.0 * (below + 0.5 * equal) / population.size)


def found_minus_median(found: Sequence[float], random: Sequence[float]) -> float:
    """The found architecture's mean top-1 over its training seeds minus the random architectures' median."""
    return float(np.mean(found) - np.median(random))
