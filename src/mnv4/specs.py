"""The MobileNetV4 family as data: one table per model, one row per block, read side by side with the paper.

Row types (columns in the order of the paper's appendix tables 11-15):

    Conv(kernel, out, stride)                       Conv2D + BN + act, no residual
    FusedIB(kernel, expand, out, stride)            full k x k conv expand + linear 1x1 projection
    UIB(start_dw, mid_dw, expand, out, stride)      DW kernels K1 / K2, 0 = absent:
                                                    ExtraDW (K1, K2), IB (-, K2), ConvNext (K1, -), FFN (-, -)
    MQA(heads, head_dim, kv_stride, out)            Mobile MQA, key = value dim = head_dim, kv_stride 2 = DW 3x3 s2

``expand`` is the expansion ratio; the paper tables print the expanded width (in x expand), given in comments.
A stage is a list of rows; a new stage starts at every stride-2 row (timm's grouping: its ``blocks.i.j`` keys and
feature levels follow it). The stem (3x3 s2 conv) and the head (global pool -> 1x1 conv 1280 + BN + act ->
dropout -> linear) are the same for every model (docs/design.md §1-2) and live in ``model.py``.

Where the released models (TF Model Garden = timm, whose checkpoints this package loads) differ from the paper,
the tables follow the released models:
- Conv-S rows 2-5: the paper draws two "FusedIB" blocks; the code has four Conv2D + BN + ReLU layers (the 1x1s have
  BN and an activation, no residual) -- docs/design.md §2.
- Hybrid-M: the /16 and /32 stages follow TF ``_mnv4_hybrid_medium_block_specs``, not paper Tab. 13
  (docs/design.md §3).
- Parameter counts: the paper's Tab. 6 counts are 0.5-1.9 M lower than the released models for M/L; the released
  counts (3,774,024 / 9,715,512 / 32,590,864 / 11,074,648 / 37,764,624) are what this package reproduces
  (docs/design.md §1).

One table is neither the paper's nor timm's: TF Model Garden's ``MobileNetV4ConvMediumSeg``, a Conv-M trimmed for
dense prediction (``CONV_MEDIUM_SEG``; docs/segmentation.md). Any table runs as a dense-prediction backbone with
``output_stride`` 16 or 8 (``mnv4.model.row_geometry``).
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from .errors import UserError

# Five stride-2 levels (stem + four strided stages): anything smaller than 32 px leaves the /32 level empty.
MIN_INPUT_SIZE = 32


@dataclass(frozen=True)
class Conv:
    kernel: int
    out: int
    stride: int = 1


@dataclass(frozen=True)
class FusedIB:
    kernel: int
    expand: float
    out: int
    stride: int = 1


@dataclass(frozen=True)
class UIB:
    start_dw: int
    mid_dw: int
    expand: float
    out: int
    stride: int = 1

    @property
    def kind(self) -> str:
        return {(True, True): "ExtraDW", (False, True): "IB", (True, False): "ConvNext", (False, False): "FFN"}[
            (bool(self.start_dw), bool(self.mid_dw))
        ]


@dataclass(frozen=True)
class MQA:
    heads: int
    head_dim: int
    kv_stride: int
    out: int
    stride: int = 1  # MQA blocks never downsample the block output


Row = Conv | FusedIB | UIB | MQA


@dataclass(frozen=True)
class ModelSpec:
    """Everything that defines one variant; ``stages`` is the layer table."""

    name: str
    stages: tuple[tuple[Row, ...], ...]
    stem: int  # stem conv width
    resolution: int  # native (paper / default tag) input size
    act: str = "relu"
    layer_scale: float | None = None  # init value of layer scale on UIB and MQA blocks (hybrids: 1e-5)
    width: float = 1.0  # channel multiplier (timm's extras: 0.35, 0.5, 0.75)
    aa: str | None = None  # anti-aliased downsampling in blocks: 'avg' or 'blurpc' (timm's extras)
    head_hidden: int = 1280  # the post-pool 1x1 conv width (not scaled by ``width``)
    description: str = ""
    source: str = ""
    top1: float | None = None  # published ImageNet-1k top-1 of the paper model (paper Tab. 6)
    extra: bool = False  # not one of the five paper models
    notes: tuple[str, ...] = field(default=())

    def blocks(self) -> list[Row]:
        return [row for stage in self.stages for row in stage]


def _stages(*stages: list[Row]) -> tuple[tuple[Row, ...], ...]:
    return tuple(tuple(stage) for stage in stages)


# MNv4-Conv-S, 224 px -- paper Tab. 11, TF MNV4ConvSmall_BLOCK_SPECS.
CONV_SMALL = ModelSpec(
    name="mobilenetv4_conv_small",
    description="MNv4-Conv-S",
    source="paper Tab. 11",
    stem=32,
    resolution=224,
    top1=73.8,
    stages=_stages(
        [   # 112 px in.  Paper: FusedIB (expanded 32 -> 32); code: two conv layers, both with BN + ReLU.
            Conv(3, 32, stride=2),
            Conv(1, 32),
        ],
        [   # 56 px in.  Paper: FusedIB (expanded 96 -> 64); code: two conv layers, both with BN + ReLU.
            Conv(3, 96, stride=2),
            Conv(1, 64),
        ],
        [   # 28 px in.  K1 K2 exp out              expanded
            UIB(5, 5, 3, 96, stride=2),  # ExtraDW  192
            UIB(0, 3, 2, 96),            # IB       192
            UIB(0, 3, 2, 96),            # IB       192
            UIB(0, 3, 2, 96),            # IB       192
            UIB(0, 3, 2, 96),            # IB       192
            UIB(3, 0, 4, 96),            # ConvNext 384
        ],
        [   # 14 px in.
            UIB(3, 3, 6, 128, stride=2),  # ExtraDW 576
            UIB(5, 5, 4, 128),            # ExtraDW 512
            UIB(0, 5, 4, 128),            # IB      512
            UIB(0, 5, 3, 128),            # IB      384
            UIB(0, 3, 4, 128),            # IB      512
            UIB(0, 3, 4, 128),            # IB      512
        ],
        [   # 7 px in.
            Conv(1, 960),
        ],
    ),
)

# MNv4-Conv-M, 256 px -- paper Tab. 12 (identical to TF and timm).
CONV_MEDIUM = ModelSpec(
    name="mobilenetv4_conv_medium",
    description="MNv4-Conv-M",
    source="paper Tab. 12",
    stem=32,
    resolution=256,
    top1=79.9,
    stages=_stages(
        [   # 128 px in.      k exp out
            FusedIB(3, 4, 48, stride=2),  # expanded 128
        ],
        [   # 64 px in.  K1 K2 exp out
            UIB(3, 5, 4, 80, stride=2),  # ExtraDW  192
            UIB(3, 3, 2, 80),            # ExtraDW  160
        ],
        [   # 32 px in.
            UIB(3, 5, 6, 160, stride=2),  # ExtraDW  480
            UIB(3, 3, 4, 160),            # ExtraDW  640
            UIB(3, 3, 4, 160),            # ExtraDW  640
            UIB(3, 5, 4, 160),            # ExtraDW  640
            UIB(3, 3, 4, 160),            # ExtraDW  640
            UIB(3, 0, 4, 160),            # ConvNext 640
            UIB(0, 0, 2, 160),            # FFN      320
            UIB(3, 0, 4, 160),            # ConvNext 640
        ],
        [   # 16 px in.
            UIB(5, 5, 6, 256, stride=2),  # ExtraDW  960
            UIB(5, 5, 4, 256),            # ExtraDW  1024
            UIB(3, 5, 4, 256),            # ExtraDW  1024
            UIB(3, 5, 4, 256),            # ExtraDW  1024
            UIB(0, 0, 4, 256),            # FFN      1024
            UIB(3, 0, 4, 256),            # ConvNext 1024
            UIB(3, 5, 2, 256),            # ExtraDW  512
            UIB(5, 5, 4, 256),            # ExtraDW  1024
            UIB(0, 0, 4, 256),            # FFN      1024
            UIB(0, 0, 4, 256),            # FFN      1024
            UIB(5, 0, 2, 256),            # ConvNext 512
        ],
        [   # 8 px in.
            Conv(1, 960),
        ],
    ),
)

# MNv4-Conv-L, 384 px -- paper Tab. 14 (identical to TF and timm).
CONV_LARGE = ModelSpec(
    name="mobilenetv4_conv_large",
    description="MNv4-Conv-L",
    source="paper Tab. 14",
    stem=24,
    resolution=384,
    top1=82.9,
    stages=_stages(
        [   # 192 px in.      k exp out
            FusedIB(3, 4, 48, stride=2),  # expanded 96
        ],
        [   # 96 px in.  K1 K2 exp out
            UIB(3, 5, 4, 96, stride=2),  # ExtraDW  192
            UIB(3, 3, 4, 96),            # ExtraDW  384
        ],
        [   # 48 px in.
            UIB(3, 5, 4, 192, stride=2),  # ExtraDW  384
            UIB(3, 3, 4, 192),            # ExtraDW  768
            UIB(3, 3, 4, 192),            # ExtraDW  768
            UIB(3, 3, 4, 192),            # ExtraDW  768
            UIB(3, 5, 4, 192),            # ExtraDW  768
            UIB(5, 3, 4, 192),            # ExtraDW  768
            UIB(5, 3, 4, 192),            # ExtraDW  768
            UIB(5, 3, 4, 192),            # ExtraDW  768
            UIB(5, 3, 4, 192),            # ExtraDW  768
            UIB(5, 3, 4, 192),            # ExtraDW  768
            UIB(3, 0, 4, 192),            # ConvNext 768
        ],
        [   # 24 px in.
            UIB(5, 5, 4, 512, stride=2),  # ExtraDW  768
            UIB(5, 5, 4, 512),            # ExtraDW  2048
            UIB(5, 5, 4, 512),            # ExtraDW  2048
            UIB(5, 5, 4, 512),            # ExtraDW  2048
            UIB(5, 0, 4, 512),            # ConvNext 2048
            UIB(5, 3, 4, 512),            # ExtraDW  2048
            UIB(5, 0, 4, 512),            # ConvNext 2048
            UIB(5, 0, 4, 512),            # ConvNext 2048
            UIB(5, 3, 4, 512),            # ExtraDW  2048
            UIB(5, 5, 4, 512),            # ExtraDW  2048
            UIB(5, 0, 4, 512),            # ConvNext 2048
            UIB(5, 0, 4, 512),            # ConvNext 2048
            UIB(5, 0, 4, 512),            # ConvNext 2048
        ],
        [   # 12 px in.
            Conv(1, 960),
        ],
    ),
)

# MNv4-Hybrid-M, 256 px -- the RELEASED layer list (TF _mnv4_hybrid_medium_block_specs = timm), which differs from
# paper Tab. 13 in the /16 and /32 stages (docs/design.md §3). Layer scale 1e-5 on every UIB and MQA block.
HYBRID_MEDIUM = ModelSpec(
    name="mobilenetv4_hybrid_medium",
    description="MNv4-Hybrid-M",
    source="TF/timm release (paper Tab. 13 differs)",
    stem=32,
    resolution=256,
    layer_scale=1e-5,
    top1=80.7,
    stages=_stages(
        [   # 128 px in.      k exp out
            FusedIB(3, 4, 48, stride=2),  # expanded 128
        ],
        [   # 64 px in.  K1 K2 exp out
            UIB(3, 5, 4, 80, stride=2),  # ExtraDW  192
            UIB(3, 3, 2, 80),            # ExtraDW  160
        ],
        [   # 32 px in.            heads dim kv_stride out
            UIB(3, 5, 6, 160, stride=2),  # ExtraDW  480
            UIB(0, 0, 2, 160),            # FFN      320   (paper Tab. 13: ExtraDW 3/3 e4)
            UIB(3, 3, 4, 160),            # ExtraDW  640
            UIB(3, 5, 4, 160),            # ExtraDW  640
            MQA(4, 64, 2, 160),           # Mobile MQA, K/V by DW 3x3 s2
            UIB(3, 3, 4, 160),            # ExtraDW  640
            MQA(4, 64, 2, 160),
            UIB(3, 0, 4, 160),            # ConvNext 640
            MQA(4, 64, 2, 160),
            UIB(3, 3, 4, 160),            # ExtraDW  640   (paper Tab. 13: FFN e4)
            MQA(4, 64, 2, 160),
            UIB(3, 0, 4, 160),            # ConvNext 640
        ],
        [   # 16 px in.  (paper Tab. 13 has a different sequence here; docs/design.md §3)
            UIB(5, 5, 6, 256, stride=2),  # ExtraDW  960
            UIB(5, 5, 4, 256),            # ExtraDW  1024
            UIB(3, 5, 4, 256),            # ExtraDW  1024
            UIB(3, 5, 4, 256),            # ExtraDW  1024
            UIB(0, 0, 2, 256),            # FFN      512
            UIB(3, 5, 2, 256),            # ExtraDW  512
            UIB(0, 0, 2, 256),            # FFN      512
            UIB(0, 0, 4, 256),            # FFN      1024
            MQA(4, 64, 1, 256),           # Mobile MQA, no K/V downsampling
            UIB(3, 0, 4, 256),            # ConvNext 1024
            MQA(4, 64, 1, 256),
            UIB(5, 5, 4, 256),            # ExtraDW  1024
            MQA(4, 64, 1, 256),
            UIB(5, 0, 4, 256),            # ConvNext 1024
            MQA(4, 64, 1, 256),
            UIB(5, 0, 4, 256),            # ConvNext 1024
        ],
        [   # 8 px in.
            Conv(1, 960),
        ],
    ),
)

# MNv4-Hybrid-L, 384 px -- paper Tab. 15 (identical to TF and timm); GELU (TF's and timm's code; docs/design.md §1).
HYBRID_LARGE = ModelSpec(
    name="mobilenetv4_hybrid_large",
    description="MNv4-Hybrid-L",
    source="paper Tab. 15",
    stem=24,
    resolution=384,
    act="gelu",
    layer_scale=1e-5,
    top1=83.4,
    stages=_stages(
        [   # 192 px in.      k exp out
            FusedIB(3, 4, 48, stride=2),  # expanded 96
        ],
        [   # 96 px in.  K1 K2 exp out
            UIB(3, 5, 4, 96, stride=2),  # ExtraDW  192
            UIB(3, 3, 4, 96),            # ExtraDW  384
        ],
        [   # 48 px in.            heads dim kv_stride out
            UIB(3, 5, 4, 192, stride=2),  # ExtraDW  384
            UIB(3, 3, 4, 192),            # ExtraDW  768
            UIB(3, 3, 4, 192),            # ExtraDW  768
            UIB(3, 3, 4, 192),            # ExtraDW  768
            UIB(3, 5, 4, 192),            # ExtraDW  768
            UIB(5, 3, 4, 192),            # ExtraDW  768
            UIB(5, 3, 4, 192),            # ExtraDW  768
            MQA(8, 48, 2, 192),           # Mobile MQA, K/V by DW 3x3 s2
            UIB(5, 3, 4, 192),            # ExtraDW  768
            MQA(8, 48, 2, 192),
            UIB(5, 3, 4, 192),            # ExtraDW  768
            MQA(8, 48, 2, 192),
            UIB(5, 3, 4, 192),            # ExtraDW  768
            MQA(8, 48, 2, 192),
            UIB(3, 0, 4, 192),            # ConvNext 768
        ],
        [   # 24 px in.
            UIB(5, 5, 4, 512, stride=2),  # ExtraDW  768
            UIB(5, 5, 4, 512),            # ExtraDW  2048
            UIB(5, 5, 4, 512),            # ExtraDW  2048
            UIB(5, 5, 4, 512),            # ExtraDW  2048
            UIB(5, 0, 4, 512),            # ConvNext 2048
            UIB(5, 3, 4, 512),            # ExtraDW  2048
            UIB(5, 0, 4, 512),            # ConvNext 2048
            UIB(5, 0, 4, 512),            # ConvNext 2048
            UIB(5, 3, 4, 512),            # ExtraDW  2048
            UIB(5, 5, 4, 512),            # ExtraDW  2048
            MQA(8, 64, 1, 512),           # Mobile MQA, no K/V downsampling
            UIB(5, 0, 4, 512),            # ConvNext 2048
            MQA(8, 64, 1, 512),
            UIB(5, 0, 4, 512),            # ConvNext 2048
            MQA(8, 64, 1, 512),
            UIB(5, 0, 4, 512),            # ConvNext 2048
            MQA(8, 64, 1, 512),
            UIB(5, 0, 4, 512),            # ConvNext 2048
        ],
        [   # 12 px in.
            Conv(1, 960),
        ],
    ),
)

# MNv4-Conv-M for dense prediction -- TF Model Garden ``MobileNetV4ConvMediumSeg``
# (``_mnv4_conv_medium_seg_block_specs``, official/vision/modeling/backbones/mobilenet.py). Not in the paper or
# timm; no released weights. Against Conv-M: the /16 stage drops its FFN (7 rows, not 8), the /32 stage keeps its
# strided 256-wide UIB and then runs seven UIBs at 128 instead of ten at 256, and the last 1x1 conv is 448 wide
# instead of 960 (TF endpoint "5"; the pooled 1x1 conv to 1280 follows as in every MNv4). TF's table names no
# activation, so its blocks take the BlockSpec default, ReLU6 (Conv-M's table says 'relu'). Native resolution:
# 512, the size segmenters are measured at here (TF gives none). Params and MACs by hand: docs/segmentation.md.
CONV_MEDIUM_SEG = ModelSpec(
    name="mobilenetv4_conv_medium_seg",
    description="Conv-M seg (TF)",
    source="TF Model Garden (no weights)",
    stem=32,
    resolution=512,
    act="relu6",
    extra=True,
    stages=_stages(
        [   # 256 px in (512 px input).  k exp out
            FusedIB(3, 4, 48, stride=2),  # expanded 128
        ],
        [   # 128 px in.  K1 K2 exp out
            UIB(3, 5, 4, 80, stride=2),  # ExtraDW  192
            UIB(3, 3, 2, 80),            # ExtraDW  160
        ],
        [   # 64 px in.
            UIB(3, 5, 6, 160, stride=2),  # ExtraDW  480
            UIB(3, 3, 4, 160),            # ExtraDW  640
            UIB(3, 3, 4, 160),            # ExtraDW  640
            UIB(3, 5, 4, 160),            # ExtraDW  640
            UIB(3, 3, 4, 160),            # ExtraDW  640
            UIB(3, 0, 4, 160),            # ConvNext 640
            UIB(3, 0, 4, 160),            # ConvNext 640   (Conv-M: FFN e2, then this row)
        ],
        [   # 32 px in.
            UIB(5, 5, 6, 256, stride=2),  # ExtraDW  960
            UIB(5, 5, 4, 128),            # ExtraDW  1024  (256 in)
            UIB(3, 5, 4, 128),            # ExtraDW  512
            UIB(3, 5, 4, 128),            # ExtraDW  512
            UIB(3, 0, 4, 128),            # ConvNext 512
            UIB(3, 5, 2, 128),            # ExtraDW  256
            UIB(5, 5, 4, 128),            # ExtraDW  512
            UIB(5, 0, 2, 128),            # ConvNext 256
        ],
        [   # 16 px in.
            Conv(1, 448),
        ],
    ),
)

PAPER_MODELS = (CONV_SMALL, CONV_MEDIUM, CONV_LARGE, HYBRID_MEDIUM, HYBRID_LARGE)

# timm's released extras (docs/design.md §4): width multipliers (stem and 1280 head kept, MQA heads/dims not scaled) and
# anti-aliased downsampling (every stride-2 conv inside the blocks runs at stride 1, then a 2x2 average pool or a
# 3x3 zero-padded blur pool). Native resolution = the default tag's training resolution.
EXTRA_MODELS = (
    replace(CONV_SMALL, name="mobilenetv4_conv_small_035", width=0.35, description="Conv-S x0.35",
            source="timm extra", top1=None, extra=True),
    replace(CONV_SMALL, name="mobilenetv4_conv_small_050", width=0.5, description="Conv-S x0.5",
            source="timm extra", top1=None, extra=True),
    replace(HYBRID_MEDIUM, name="mobilenetv4_hybrid_medium_075", width=0.75, resolution=224,
            description="Hybrid-M x0.75", source="timm extra", top1=None, extra=True),
    replace(HYBRID_LARGE, name="mobilenetv4_hybrid_large_075", width=0.75, resolution=256,
            description="Hybrid-L x0.75", source="timm extra", top1=None, extra=True),
    replace(CONV_MEDIUM, name="mobilenetv4_conv_aa_medium", aa="avg", description="Conv-M, avg-pool AA",
            source="timm extra", top1=None, extra=True),
    replace(CONV_MEDIUM, name="mobilenetv4_conv_blur_medium", aa="blurpc", resolution=224,
            description="Conv-M, blur-pool AA", source="timm extra", top1=None, extra=True),
    replace(CONV_LARGE, name="mobilenetv4_conv_aa_large", aa="avg", description="Conv-L, avg-pool AA",
            source="timm extra", top1=None, extra=True),
)

# Dense-prediction variants (TF Model Garden's): no timm counterpart, so no checkpoint, tag or timm parity test.
DENSE_MODELS = (CONV_MEDIUM_SEG,)

MODEL_SPECS: dict[str, ModelSpec] = {spec.name: spec for spec in PAPER_MODELS + EXTRA_MODELS + DENSE_MODELS}



# ---------------------------------------------------------------------------------------------------- lookup
def closest_names(name: str, candidates: Sequence[str], n: int = 3) -> list[str]:
    """Up to ``n`` candidates that look like ``name`` (for "did you mean" hints)."""
    close = difflib.get_close_matches(name, candidates, n=n, cutoff=0.5)
    if not close:  # fall back to substring matches (e.g. 'hybrid' -> all hybrids)
        close = [c for c in candidates if name.lower() in c][:n]
    return close


def is_spec_file(name: object) -> bool:
    """True when ``name`` names a spec file (``*.json``) rather than a registered variant."""
    return isinstance(name, (str, os.PathLike)) and os.fspath(name).lower().endswith(".json")


def get_spec(name: str | os.PathLike | ModelSpec) -> ModelSpec:
    """The layer table of a registered variant, of a spec file (``*.json``, see ``save_spec``), or ``name`` itself
    when it already is a ``ModelSpec``. Unknown names raise a ``UserError`` naming the closest variants."""
    if isinstance(name, ModelSpec):
        validate_spec(name)
        return name
    if is_spec_file(name):
        return load_spec(name)
    if name in MODEL_SPECS:
        return MODEL_SPECS[name]
    close = closest_names(str(name), list(MODEL_SPECS))
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise UserError(
        f"unknown model {name!r}.{hint} See mnv4.list_models() for all {len(MODEL_SPECS)} variants, or pass a "
        "spec file (*.json, e.g. from `mnv4 search`)."
    )


# ---------------------------------------------------------------------------------------------------- spec files
# A spec file is the layer table as JSON: the ModelSpec fields, and ``stages`` as lists of rows, each row an object
# with its type and the row's fields in table order, e.g. {"type": "UIB", "start_dw": 3, "mid_dw": 5, "expand": 4,
# "out": 80, "stride": 2}. ``mnv4 search`` writes them; every command that takes a variant name takes one.
SPEC_FORMAT = "mnv4-architecture/1"
ROW_TYPES: dict[str, type] = {"Conv": Conv, "FusedIB": FusedIB, "UIB": UIB, "MQA": MQA}
_KERNELS = (1, 3, 5, 7)


def spec_to_dict(spec: ModelSpec) -> dict:
    """The JSON-ready form of a spec (``spec_from_dict`` reads it back)."""
    out = {"format": SPEC_FORMAT}
    for f in fields(ModelSpec):
        value = getattr(spec, f.name)
        if f.name == "stages":
            value = [[{"type": type(row).__name__, **asdict(row)} for row in stage] for stage in spec.stages]
        elif f.name == "notes":
            value = list(value)
        out[f.name] = value
    return out


def spec_from_dict(data: dict, source: str = "spec") -> ModelSpec:
    """A validated ``ModelSpec`` from ``spec_to_dict``'s form; anything malformed raises one ``UserError``."""
    if not isinstance(data, dict):
        raise UserError(f"{source}: expected a JSON object with the ModelSpec fields, got {type(data).__name__}")
    if data.get("format", SPEC_FORMAT) != SPEC_FORMAT:
        raise UserError(f"{source}: unknown spec format {data.get('format')!r}; this mnv4 reads {SPEC_FORMAT!r}")
    known = {f.name for f in fields(ModelSpec)}
    unknown = sorted(set(data) - known - {"format"})
    if unknown:
        raise UserError(f"{source}: unknown field(s) {', '.join(unknown)}; a spec has {', '.join(sorted(known))}")
    missing = [k for k in ("name", "stages", "stem", "resolution") if k not in data]
    if missing:
        raise UserError(f"{source}: missing field(s) {', '.join(missing)}")
    stages = data["stages"]
    if not isinstance(stages, list) or not stages or not all(isinstance(s, list) and s for s in stages):
        raise UserError(f"{source}: 'stages' must be a non-empty list of non-empty lists of rows")
    rows_out = []
    for si, stage in enumerate(stages):
        rows = []
        for ri, row in enumerate(stage):
            where = f"{source}: stages[{si}][{ri}]"
            if not isinstance(row, dict) or row.get("type") not in ROW_TYPES:
                raise UserError(f"{where}: expected an object with 'type' one of {', '.join(ROW_TYPES)}, got {row!r}")
            cls = ROW_TYPES[row["type"]]
            args = {k: v for k, v in row.items() if k != "type"}
            try:
                rows.append(cls(**args))
            except TypeError as err:
                names = ", ".join(f.name for f in fields(cls))
                raise UserError(f"{where}: {row['type']} takes {names} ({err})") from None
        rows_out.append(tuple(rows))
    values = {k: v for k, v in data.items() if k in known}
    values["stages"] = tuple(rows_out)
    notes = values.get("notes", [])
    if not isinstance(notes, (list, tuple)):
        raise UserError(f"{source}: 'notes' must be a list of strings, got {notes!r}")
    values["notes"] = tuple(notes)
    try:
        spec = ModelSpec(**values)
    except TypeError as err:
        raise UserError(f"{source}: {err}") from None
    validate_spec(spec, source)
    return spec


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise UserError(message)


def _is_int(value: object, lo: int = 1) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= lo


def _is_number(value: object) -> bool:
    """A finite int or float (bools are not numbers; NaN compares false, so ranges alone would let it through)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


SPEC_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def check_spec_name(name: object, what: str = "name") -> None:
    """A name an architecture can be saved and referred to under: letters, digits, '_', '.', '-' (it becomes a file
    name), not the name of a registered variant (which would shadow it)."""
    _check(isinstance(name, str) and SPEC_NAME.fullmatch(name) is not None,
           f"{what} {name!r} is not a valid architecture name: use letters, digits, '_', '.' and '-' (it becomes "
           "the file name <name>.json)")
    _check(name not in MODEL_SPECS, f"{what} {name!r} is a registered variant's name; give the architecture its own")


def validate_spec(spec: ModelSpec, source: str | None = None) -> None:
    """Raise a ``UserError`` unless ``spec`` builds a working MobileNetV4 (types, ranges, strides, widths)."""
    where = source or spec.name
    _check(isinstance(spec.name, str) and spec.name.strip() != "", f"{where}: 'name' must be a non-empty string")
    _check(_is_int(spec.stem), f"{where}: 'stem' must be a positive int, got {spec.stem!r}")
    _check(_is_int(spec.resolution, MIN_INPUT_SIZE), f"{where}: 'resolution' must be an int >= {MIN_INPUT_SIZE}")
    _check(spec.act in ("relu", "relu6", "gelu"), f"{where}: 'act' must be 'relu', 'relu6' or 'gelu', got {spec.act!r}")
    _check(spec.aa in (None, "avg", "blurpc"), f"{where}: 'aa' must be null, 'avg' or 'blurpc', got {spec.aa!r}")
    _check(
        spec.layer_scale is None or (_is_number(spec.layer_scale) and 0 < spec.layer_scale < math.inf),
        f"{where}: 'layer_scale' must be null or a positive finite number, got {spec.layer_scale!r}",
    )
    _check(_is_number(spec.width) and 0 < spec.width <= 4, f"{where}: 'width' must be in (0, 4]")
    _check(_is_int(spec.head_hidden), f"{where}: 'head_hidden' must be a positive int")
    for name in ("description", "source"):
        _check(isinstance(getattr(spec, name), str), f"{where}: {name!r} must be a string, got {getattr(spec, name)!r}")
    _check(isinstance(spec.notes, tuple) and all(isinstance(n, str) for n in spec.notes),
           f"{where}: 'notes' must be a list of strings, got {spec.notes!r}")
    _check(spec.top1 is None or (_is_number(spec.top1) and 0 <= spec.top1 <= 100),
           f"{where}: 'top1' must be null or a percentage, got {spec.top1!r}")
    _check(isinstance(spec.extra, bool), f"{where}: 'extra' must be true or false, got {spec.extra!r}")
    reduction, width = 2, spec.stem
    for si, stage in enumerate(spec.stages):
        for ri, row in enumerate(stage):
            at = f"{where}: stages[{si}][{ri}] ({type(row).__name__})"
            _check(row.stride in (1, 2), f"{at}: stride must be 1 or 2, got {row.stride!r}")
            _check(_is_int(row.out), f"{at}: 'out' must be a positive int, got {row.out!r}")
            if isinstance(row, (Conv, FusedIB)):
                _check(row.kernel in _KERNELS, f"{at}: kernel must be one of {_KERNELS}, got {row.kernel!r}")
            if isinstance(row, (FusedIB, UIB)):
                _check(
                    _is_number(row.expand) and 0 < row.expand <= 16,
                    f"{at}: 'expand' must be a number in (0, 16], got {row.expand!r}",
                )
            if isinstance(row, UIB):
                for k in ("start_dw", "mid_dw"):
                    _check(getattr(row, k) in (0, *_KERNELS), f"{at}: {k} must be 0 (absent) or one of {_KERNELS}")
                _check(
                    row.stride == 1 or row.start_dw or row.mid_dw,
                    f"{at}: a strided UIB needs a start or middle depthwise conv to carry the stride",
                )
            if isinstance(row, MQA):
                _check(_is_int(row.heads) and _is_int(row.head_dim), f"{at}: heads and head_dim must be positive")
                _check(row.kv_stride in (1, 2), f"{at}: kv_stride must be 1 or 2, got {row.kv_stride!r}")
                _check(row.stride == 1, f"{at}: Mobile MQA blocks do not downsample (stride 1)")
                _check(row.out == width, f"{at}: a Mobile MQA row keeps the width ({width} in, {row.out} out)")
            reduction *= row.stride
            width = row.out
    _check(
        reduction == 32,
        f"{where}: the stem and the strided rows must downsample by 32 in all (five stride-2 levels), got {reduction}",
    )
    registered = MODEL_SPECS.get(spec.name)
    _check(
        registered is None or registered == spec,
        f"{where}: {spec.name!r} is the name of a registered variant with a different table; give the spec its "
        "own name",
    )


def save_spec(spec: ModelSpec, path: str | os.PathLike) -> Path:
    """Write ``spec`` as a spec file (JSON) that ``get_spec`` / ``create_model`` / every CLI command read back."""
    validate_spec(spec)
    path = Path(path)
    path.write_text(json.dumps(spec_to_dict(spec), indent=2) + "\n", encoding="utf-8")
    return path


def load_spec(path: str | os.PathLike) -> ModelSpec:
    """Read and validate a spec file; a missing, unreadable or invalid file raises one ``UserError``."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"spec file {str(path)!r} does not exist" + (" (it is a folder)" if path.is_dir() else ""))
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{path}: not a JSON spec file ({err})") from None
    return spec_from_dict(data, str(path))
