"""``create_model`` / ``list_models``: the entry points, in timm's conventions (ecosystem §3.1)."""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Sequence

from .model import MobileNetV4
from .specs import MODEL_SPECS, ModelSpec


def list_models(pattern: str = "*") -> list[str]:
    """Names of the registered variants matching a shell-style ``pattern`` (e.g. ``'*hybrid*'``), sorted."""
    return sorted(name for name in MODEL_SPECS if fnmatch.fnmatch(name, pattern))


def closest_names(name: str, candidates: Sequence[str], n: int = 3) -> list[str]:
    close = difflib.get_close_matches(name, candidates, n=n, cutoff=0.5)
    if not close:  # fall back to substring matches (e.g. 'hybrid' -> all hybrids)
        close = [c for c in candidates if name.lower() in c][:n]
    return close


def get_spec(name: str) -> ModelSpec:
    """The layer table of a variant; raises a ValueError naming the closest variants when unknown."""
    if name in MODEL_SPECS:
        return MODEL_SPECS[name]
    close = closest_names(name, list(MODEL_SPECS))
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise ValueError(f"unknown model {name!r}.{hint} See mnv4.list_models() for all {len(MODEL_SPECS)} variants.")


def create_model(
    name: str,
    num_classes: int = 1000,
    in_chans: int = 3,
    drop_rate: float = 0.0,
    drop_path_rate: float = 0.0,
    features_only: bool = False,
    out_indices: Sequence[int] | None = None,
    attn_impl: str = "sdpa",
) -> MobileNetV4:
    """Build a MobileNetV4 variant by name (``mnv4.list_models()``), randomly initialised as timm does.

    ``features_only=True`` gives a model whose forward returns the feature maps at ``out_indices`` of the 5 levels
    (reductions 2, 4, 8, 16, 32), with ``model.feature_info.channels()`` / ``.reduction()``.
    """
    spec = get_spec(name)
    return MobileNetV4(
        spec,
        num_classes=num_classes,
        in_chans=in_chans,
        drop_rate=drop_rate,
        drop_path_rate=drop_path_rate,
        features_only=features_only,
        out_indices=out_indices,
        attn_impl=attn_impl,
    )
