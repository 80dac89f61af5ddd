"""What ``mnv4 bench`` can measure: every MobileNetV4 variant plus torchvision's MobileNetV3 baselines.

Each entry knows how to build its network (random init, nothing downloaded), its input size, and its published
ImageNet-1k top-1 with the source named -- the y axis of the Pareto plot.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import UserError

# The default run: the five paper models at their paper resolutions, then the MobileNetV3 baselines at 224.
PAPER_MODELS = (
    "mobilenetv4_conv_small",
    "mobilenetv4_conv_medium",
    "mobilenetv4_conv_large",
    "mobilenetv4_hybrid_medium",
    "mobilenetv4_hybrid_large",
)
BASELINES = ("mobilenet_v3_large", "mobilenet_v3_small")
DEFAULT_MODELS = PAPER_MODELS + BASELINES
REFERENCE_MODEL = "mobilenet_v3_large"  # speed-ups are reported against this one

# torchvision's best published ImageNet-1k weights per baseline; their accuracy is read from torchvision's own weight
# metadata (no download): MobileNetV3-Large IMAGENET1K_V2 75.274, -Small IMAGENET1K_V1 67.668 (torchvision 0.29).
_BASELINE_WEIGHTS = {
    "mobilenet_v3_large": ("MobileNet_V3_Large_Weights", "IMAGENET1K_V2"),
    "mobilenet_v3_small": ("MobileNet_V3_Small_Weights", "IMAGENET1K_V1"),
}

# timm's evaluated top-1 of the released extras at their default tag's training resolution = their native size here
# (timm results-imagenet.csv). The five paper models use paper Tab. 6 (``ModelSpec.top1``).
_TIMM_TOP1 = {
    "mobilenetv4_conv_small_050": (64.778, "timm conv_small_050.e3000_r224_in1k"),
    "mobilenetv4_conv_blur_medium": (79.446, "timm conv_blur_medium.e500_r224_in1k"),
    "mobilenetv4_conv_aa_large": (83.264, "timm conv_aa_large.e600_r384_in1k"),
}


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    label: str  # short name for tables and plots
    resolution: int
    top1: float | None
    top1_source: str
    baseline: bool

    def build(self, resolution: int | None = None) -> nn.Module:
        """The network in eval mode with trained-like random weights (no download), refused (``UserError``) when it
        would not fit in this machine's memory at ``resolution`` (default: its own), before anything is allocated.

        Latency does not depend on the weights' values -- except through float denormals: with random-init
        BatchNorm (identity statistics) activations can decay into denormals in deep layers, which slows CPU kernels
        several-fold and would not happen with trained weights. ``make_nondegenerate`` measures BN statistics on a
        random batch so every layer sees unit-scale activations, for MNv4 and the MobileNetV3 baselines alike.
        """
        from ..testing import make_nondegenerate

        if self.baseline:
            import torchvision

            model = getattr(torchvision.models, self.name)(weights=None)
        else:
            from dataclasses import replace

            from ..analysis import check_fits
            from ..factory import create_model
            from ..specs import get_spec

            check_fits(replace(get_spec(self.name), resolution=resolution or self.resolution))
            model = create_model(self.name)
        size = (self.resolution, self.resolution)
        with torch.random.fork_rng():
            return make_nondegenerate(model, seed=0, input_size=size, batch_size=2, passes=1)


def _baseline_top1(name: str) -> tuple[float | None, str]:
    enum_name, tag = _BASELINE_WEIGHTS[name]
    try:
        import torchvision

        meta = getattr(getattr(torchvision.models, enum_name), tag).meta
        return float(meta["_metrics"]["ImageNet-1K"]["acc@1"]), f"torchvision {enum_name}.{tag} metadata"
    except (AttributeError, KeyError, ImportError):
        return None, "not published in this torchvision"


def catalog_entry(name: str) -> CatalogEntry:
    from ..factory import closest_names
    from ..specs import MODEL_SPECS, get_spec, is_spec_file

    if is_spec_file(name):  # a spec file (e.g. from `mnv4 search`): built from the file, labelled by its name
        spec = get_spec(name)
        top1_source = "spec file" if spec.top1 is not None else "no published top-1"
        return CatalogEntry(name, spec.name, spec.resolution, spec.top1, top1_source, baseline=False)
    if name in MODEL_SPECS:
        spec = MODEL_SPECS[name]
        if spec.top1 is not None:
            top1, source = spec.top1, "MNv4 paper Tab. 6"
        else:
            top1, source = _TIMM_TOP1.get(name, (None, "no published top-1"))
        return CatalogEntry(name, spec.description or name, spec.resolution, top1, source, baseline=False)
    if name in BASELINES:
        top1, source = _baseline_top1(name)
        label = {"mobilenet_v3_large": "MNv3-L", "mobilenet_v3_small": "MNv3-S"}[name]
        return CatalogEntry(name, label, 224, top1, source, baseline=True)
    known = list(MODEL_SPECS) + list(BASELINES)
    close = closest_names(name, known)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise UserError(f"unknown model {name!r}.{hint} Choose from: {', '.join(known)}")


def resolve_models(names: Sequence[str] | None) -> list[CatalogEntry]:
    """Catalog entries for ``names`` (default: the paper models and baselines), duplicates dropped, order kept."""
    names = list(dict.fromkeys(names)) if names else list(DEFAULT_MODELS)
    if not names:
        raise UserError("no models given")
    return [catalog_entry(n) for n in names]
