"""The search space as data, in the row vocabulary of ``specs.py`` (paper §6.1, App. A).

A space is the paper's recipe for one model size: a fixed 3x3 s2 stem, fixed early stage(s), searchable stages of
UIB blocks, and the fixed MobileNetV3-style head (1x1 conv -> pool -> 1x1 conv -> classifier). Per searchable stage
the decisions are its width (output channels, from a list) and depth (how many blocks; the blocks beyond it are
identity), and per block the UIB start-DW and middle-DW slots (absent / 3x3 / 5x5) and the expansion ratio.

An architecture is a tuple of choice indices, one per ``Decision`` of ``space.decisions`` (in that order); every
architecture decodes to an ordinary ``ModelSpec`` (``decode``), and a spec that is a point of the space encodes back
(``encode``). The per-size spaces are built around the paper's tables so that Conv-S, Conv-M and Conv-L are points
of the space of their size: their fixed parts are the models' own (Conv-S: four Conv rows in two stages; Conv-M/L:
one FusedIB), their widths are in the width choices and their depths in the depth choices.

The first block of every searchable stage carries the stage's stride 2 and always has a middle DW (the released
models' strided UIBs are all ExtraDW, with the stride on the middle DW); it is never optional.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property

import torch

from ..errors import UserError
from ..layers import make_divisible
from ..specs import CONV_LARGE, CONV_MEDIUM, CONV_SMALL, UIB, Conv, FusedIB, ModelSpec, Row

# Decision kinds. The paper's coarse stage searches the network's shape, the fine stage the blocks (paper §6.1).
WIDTH, DEPTH, START_DW, MID_DW, EXPAND = "width", "depth", "start_dw", "mid_dw", "expand"
COARSE_KINDS = (WIDTH, DEPTH)
FINE_KINDS = (START_DW, MID_DW, EXPAND)
# TuNAS's two warm-ups: "filters" decisions take their largest choice, "ops" decisions enable all their choices.
FILTER_KINDS = (WIDTH, DEPTH, EXPAND)
OP_KINDS = (START_DW, MID_DW)
# The coarse stage fixes every block to an IB with expansion 4 and a 3x3 DW (paper §6.1).
COARSE_BLOCK = {START_DW: 0, MID_DW: 3, EXPAND: 4}

Arch = tuple[int, ...]


@dataclass(frozen=True)
class Key:
    """Which decision: a searchable stage's width or depth (``block`` None), or one slot of one of its blocks.
    ``str(key)`` is the decision's name in files and reports ('s2.width', 's2.b0.mid_dw')."""

    stage: int  # index of the searchable stage (0 = the first searchable one)
    kind: str
    block: int | None = None

    def __str__(self) -> str:
        return f"s{self.stage}.{self.kind}" if self.block is None else f"s{self.stage}.b{self.block}.{self.kind}"


@dataclass(frozen=True)
class Decision:
    """One categorical choice of the space."""

    key: Key
    choices: tuple

    @property
    def name(self) -> str:
        return str(self.key)

    @property
    def kind(self) -> str:
        return self.key.kind

    @property
    def stage(self) -> int:
        return self.key.stage

    @property
    def block(self) -> int | None:
        return self.key.block

    def index(self, value) -> int:
        for i, choice in enumerate(self.choices):
            if choice == value:
                return i
        raise UserError(f"{self.name}: {value!r} is not one of the choices {list(self.choices)}")


@dataclass(frozen=True)
class StageSpace:
    """One searchable stage: output width and depth choices, and the per-block choices."""

    widths: tuple[int, ...]
    depths: tuple[int, ...]
    start_dw: tuple[int, ...] = (0, 3, 5)
    mid_dw: tuple[int, ...] = (0, 3, 5)
    expansions: tuple[int | float, ...] = (2, 3, 4, 6)

    @property
    def max_depth(self) -> int:
        return max(self.depths)

    def mid_choices(self, block: int) -> tuple[int, ...]:
        """The strided first block keeps its middle DW (it carries the stride)."""
        return tuple(k for k in self.mid_dw if k) if block == 0 else self.mid_dw


@dataclass(frozen=True)
class BlockPath:
    """What one UIB slot of the supernet runs: the active kernels of each DW slot (0 = identity; more than one =
    TuNAS's "all ops enabled" warm-up, whose output is their mean) and the expansion ratio."""

    start: tuple[int, ...]
    mid: tuple[int, ...]
    expand: int | float


@dataclass(frozen=True)
class StagePath:
    width: int
    blocks: tuple[BlockPath, ...]  # len = the stage's depth


@dataclass(frozen=True)
class SearchSpace:
    """A per-size search space. ``fixed`` are the spec stages between the stem and the first searchable stage;
    ``head`` is the final 1x1 conv row (its own spec stage, as in ``specs.py``)."""

    name: str
    description: str
    stem: int
    fixed: tuple[tuple[Row, ...], ...]
    stages: tuple[StageSpace, ...]
    resolution: int
    head: Conv = Conv(1, 960)
    head_hidden: int = 1280
    act: str = "relu"
    reference: str | None = None  # the paper model that is a point of this space

    def __post_init__(self):
        for s, stage in enumerate(self.stages):
            at = f"search space {self.name!r}, stage s{s}"
            if not stage.widths or not stage.depths or min(stage.depths) < 1:
                raise ValueError(f"{at}: needs width choices and depth choices >= 1")
            for kind, value in COARSE_BLOCK.items():
                choices = {START_DW: stage.start_dw, MID_DW: stage.mid_dw, EXPAND: stage.expansions}[kind]
                if value not in choices:
                    raise ValueError(f"{at}: the coarse stage's IB e4 k3 blocks need {kind} {value} among the choices")
            if not stage.mid_choices(0):
                raise ValueError(f"{at}: the strided first block needs a middle DW kernel choice")

    # ------------------------------------------------------------------------------------------- decisions
    @cached_property
    def decisions(self) -> tuple[Decision, ...]:
        out = []
        for s, stage in enumerate(self.stages):
            out.append(Decision(Key(s, WIDTH), tuple(stage.widths)))
            out.append(Decision(Key(s, DEPTH), tuple(stage.depths)))
            for b in range(stage.max_depth):
                out.append(Decision(Key(s, START_DW, b), tuple(stage.start_dw)))
                out.append(Decision(Key(s, MID_DW, b), stage.mid_choices(b)))
                out.append(Decision(Key(s, EXPAND, b), tuple(stage.expansions)))
        return tuple(out)

    @cached_property
    def _index(self) -> dict[Key, int]:
        return {d.key: i for i, d in enumerate(self.decisions)}

    def decision_index(self, key: Key) -> int:
        return self._index[key]

    def choice(self, arch: Arch, key: Key):
        """The value ``arch`` takes for the decision ``key``."""
        i = self._index[key]
        return self.decisions[i].choices[arch[i]]

    def stage_rows(self, arch: Arch, stage: int, width: int = 1) -> list[UIB]:
        """The UIB rows ``arch`` puts in searchable stage ``stage`` (stride 2 on the first), at ``width``."""
        return [UIB(self.choice(arch, Key(stage, START_DW, b)), self.choice(arch, Key(stage, MID_DW, b)),
                    self.choice(arch, Key(stage, EXPAND, b)), width, stride=2 if b == 0 else 1)
                for b in range(self.choice(arch, Key(stage, DEPTH)))]

    @property
    def first_stage_index(self) -> int:
        """Index in ``spec.stages`` of the first searchable stage."""
        return len(self.fixed)

    def values(self, arch: Arch) -> dict[str, object]:
        """{decision name: chosen value} (for files and reports)."""
        self.check_arch(arch)
        return {d.name: d.choices[i] for d, i in zip(self.decisions, arch, strict=True)}

    def describe(self, arch: Arch) -> str:
        """The decisions that matter for ``arch``, e.g. 's0: 48 ch x 2 [IB k3 e4, ExtraDW 3/5 e6]; s1: ...'."""
        self.check_arch(arch)
        parts = []
        for s in range(len(self.stages)):
            rows = self.stage_rows(arch, s)
            blocks = ", ".join(f"{r.kind} {r.start_dw}/{r.mid_dw} e{r.expand}" for r in rows)
            parts.append(f"s{s}: {self.choice(arch, Key(s, WIDTH))} ch x {len(rows)} [{blocks}]")
        return "; ".join(parts)

    def check_arch(self, arch: Sequence[int]) -> None:
        if len(arch) != len(self.decisions) or any(
            not isinstance(i, int) or not 0 <= i < len(d.choices) for d, i in zip(self.decisions, arch, strict=False)
        ):
            raise ValueError(f"not an architecture of search space {self.name!r}: {tuple(arch)!r}")

    def depth_of(self, arch: Arch, stage: int) -> int:
        return self.choice(arch, Key(stage, DEPTH))

    def active(self, arch: Arch) -> list[bool]:
        """Which decisions matter for ``arch``: the block decisions of blocks beyond their stage's depth do not
        (TuNAS's hierarchical sampling leaves them out of the log-probability and the entropy)."""
        depths = [self.depth_of(arch, s) for s in range(len(self.stages))]
        return [d.block is None or d.block < depths[d.stage] for d in self.decisions]

    # ------------------------------------------------------------------------------------------- points
    def with_values(self, arch: Arch, values: dict[Key, object]) -> Arch:
        """``arch`` with the decisions ``values`` names set to those values."""
        out = list(arch)
        for key, value in values.items():
            i = self._index[key]
            out[i] = self.decisions[i].index(value)
        return tuple(out)

    def largest(self) -> Arch:
        """Every decision at its largest choice (widest, deepest, biggest kernels and expansion)."""
        return tuple(max(range(len(d.choices)), key=lambda i, d=d: d.choices[i]) for d in self.decisions)

    def coarse_blocks(self, arch: Arch) -> Arch:
        """``arch`` with every block an IB e4 k3, as in the paper's coarse stage."""
        out = list(arch)
        for i, d in enumerate(self.decisions):
            if d.kind in COARSE_BLOCK:
                out[i] = d.index(COARSE_BLOCK[d.kind])
        return tuple(out)

    def random(self, generator: torch.Generator | None = None) -> Arch:
        """A uniformly random architecture (each decision independently)."""
        draws = torch.rand(len(self.decisions), generator=generator).tolist()
        return tuple(min(int(u * len(d.choices)), len(d.choices) - 1) for d, u in zip(self.decisions, draws,
                                                                                        strict=True))

    # ------------------------------------------------------------------------------------------- decode / encode
    def decode(
        self,
        arch: Arch,
        name: str = "nas_candidate",
        resolution: int | None = None,
        description: str = "",
        notes: Iterable[str] = (),
    ) -> ModelSpec:
        """The ``ModelSpec`` of ``arch``: fixed stages, one stage of UIB rows per searchable stage, the head row."""
        self.check_arch(arch)
        stages: list[tuple[Row, ...]] = list(self.fixed)
        for s in range(len(self.stages)):
            stages.append(tuple(self.stage_rows(arch, s, width=self.choice(arch, Key(s, WIDTH)))))
        stages.append((self.head,))
        return ModelSpec(
            name=name,
            stages=tuple(stages),
            stem=self.stem,
            resolution=resolution or self.resolution,
            act=self.act,
            head_hidden=self.head_hidden,
            description=description,
            source=f"mnv4 search, space {self.name}",
            extra=True,
            notes=tuple(notes),
        )

    def encode(self, spec: ModelSpec) -> Arch:
        """The architecture whose ``decode`` gives ``spec``'s layer table; a ``UserError`` saying what differs when
        ``spec`` is not a point of this space. Decisions of absent blocks get the coarse stage's IB e4 k3."""
        where = f"{spec.name} is not a point of search space {self.name!r}"

        def check(ok: bool, what: str) -> None:
            if not ok:
                raise UserError(f"{where}: {what}")

        check(spec.width == 1.0 and spec.aa is None and spec.layer_scale is None,
              "width multipliers, anti-aliasing and layer scale are not part of the space")
        check(spec.stem == self.stem, f"stem width {spec.stem}, the space's is {self.stem}")
        check(spec.act == self.act, f"activation {spec.act!r}, the space's is {self.act!r}")
        check(spec.head_hidden == self.head_hidden, f"head width {spec.head_hidden}, the space's is {self.head_hidden}")
        n_fixed = len(self.fixed)
        check(len(spec.stages) == n_fixed + len(self.stages) + 1,
              f"{len(spec.stages)} stages, the space has {n_fixed} fixed + {len(self.stages)} searchable + 1 head")
        check(spec.stages[:n_fixed] == self.fixed, f"the early stages differ from the space's fixed {self.fixed}")
        check(spec.stages[-1] == (self.head,), f"the last stage must be the head row {self.head}")
        arch = list(self.coarse_blocks(tuple(0 for _ in self.decisions)))
        for s, stage in enumerate(self.stages):
            rows = spec.stages[n_fixed + s]
            at = f"stage {n_fixed + s} (searchable s{s})"
            check(all(isinstance(r, UIB) for r in rows), f"{at} must be UIB rows only")
            check(all(r.stride == (2 if b == 0 else 1) for b, r in enumerate(rows)),
                  f"{at}: the first block must have stride 2 and the others stride 1")
            check(len({r.out for r in rows}) == 1, f"{at}: every block of a stage has the stage's width")
            check(len(rows) <= stage.max_depth, f"{at} has {len(rows)} blocks, the space allows {list(stage.depths)}")
            values = {Key(s, WIDTH): rows[0].out, Key(s, DEPTH): len(rows)}
            for b, row in enumerate(rows):
                values.update({Key(s, START_DW, b): row.start_dw, Key(s, MID_DW, b): row.mid_dw,
                               Key(s, EXPAND, b): row.expand})
            for key, value in values.items():
                d = self.decisions[self._index[key]]
                check(value in d.choices, f"{key} = {value!r} is not one of {list(d.choices)}")
                arch[self._index[key]] = d.index(value)
        return tuple(arch)

    def contains(self, spec: ModelSpec) -> bool:
        try:
            self.encode(spec)
        except UserError:
            return False
        return True

    # ------------------------------------------------------------------------------------------- supernet paths
    def path(self, arch: Arch, all_ops: Iterable[int] = ()) -> tuple[StagePath, ...]:
        """What the supernet runs for ``arch``; the op decisions whose indices are in ``all_ops`` enable every
        choice (TuNAS's ops warm-up)."""
        self.check_arch(arch)
        everything = set(all_ops)

        def kernels(key: Key) -> tuple[int, ...]:
            i = self._index[key]
            return self.decisions[i].choices if i in everything else (self.decisions[i].choices[arch[i]],)

        out = []
        for s in range(len(self.stages)):
            blocks = tuple(BlockPath(kernels(Key(s, START_DW, b)), kernels(Key(s, MID_DW, b)),
                                     self.choice(arch, Key(s, EXPAND, b)))
                           for b in range(self.choice(arch, Key(s, DEPTH))))
            out.append(StagePath(self.choice(arch, Key(s, WIDTH)), blocks))
        return tuple(out)

    def input_widths(self, stage: int) -> tuple[int, ...]:
        """The widths the first block of searchable stage ``stage`` can receive."""
        return (self.fixed_out,) if stage == 0 else self.stages[stage - 1].widths

    @property
    def fixed_out(self) -> int:
        """Channels out of the fixed stages (the input of the first searchable stage)."""
        return self.fixed[-1][-1].out if self.fixed else self.stem


# --------------------------------------------------------------------------------------------- the spaces
# TuNAS-style filter multipliers around the paper model's widths (TuNAS searches multiples of a base width).
WIDTH_MULTIPLIERS = (0.5, 0.625, 0.75, 0.875, 1.0, 1.25, 1.5)


def _widths_around(base: int) -> tuple[int, ...]:
    return tuple(sorted({make_divisible(base * m) for m in WIDTH_MULTIPLIERS}))


def _depths_around(depth: int) -> tuple[int, ...]:
    """From about half the paper's depth to two more blocks."""
    return tuple(range(max(1, math.ceil(depth / 2)), depth + 3))


def space_around(spec: ModelSpec, name: str) -> SearchSpace:
    """The space of one paper model's size: its stem, fixed stages and head; widths and depths around its own."""
    first = next(i for i, stage in enumerate(spec.stages) if isinstance(stage[0], UIB))
    searchable = spec.stages[first:-1]
    stages = tuple(StageSpace(_widths_around(rows[0].out), _depths_around(len(rows))) for rows in searchable)
    return SearchSpace(
        name=name,
        description=f"{spec.description}-sized: {len(stages)} searchable UIB stages",
        stem=spec.stem,
        fixed=spec.stages[:first],
        stages=stages,
        resolution=spec.resolution,
        head=spec.stages[-1][0],
        head_hidden=spec.head_hidden,
        act=spec.act,
        reference=spec.name,
    )


# A small space for CPU proxies (digits at 32 px, the tests): the same structure, narrow and shallow, a narrow head.
TINY = SearchSpace(
    name="tiny",
    description="CPU proxy: FusedIB stem stage, 3 searchable UIB stages of <= 3 blocks, 256/512 head",
    stem=16,
    fixed=((FusedIB(3, 2, 24, stride=2),),),
    stages=(
        StageSpace(widths=(16, 24, 32, 48), depths=(1, 2, 3)),
        StageSpace(widths=(24, 32, 48, 64), depths=(1, 2, 3)),
        StageSpace(widths=(32, 48, 64, 96), depths=(1, 2, 3)),
    ),
    resolution=32,
    head=Conv(1, 256),
    head_hidden=512,
)

SPACES: dict[str, SearchSpace] = {
    "conv_small": space_around(CONV_SMALL, "conv_small"),
    "conv_medium": space_around(CONV_MEDIUM, "conv_medium"),
    "conv_large": space_around(CONV_LARGE, "conv_large"),
    "tiny": TINY,
}


def get_space(name: str | SearchSpace) -> SearchSpace:
    if isinstance(name, SearchSpace):
        return name
    if name not in SPACES:
        raise UserError(f"unknown search space {name!r}; choose one of {', '.join(SPACES)}")
    return SPACES[name]
