"""The weight-sharing supernet: one set of weights that runs any architecture of a search space (TuNAS, paper §4).

Sharing:
- widths and expansions: every conv and BN is allocated at the largest size a slot can need, and a smaller choice
  uses its first k channels (TuNAS's channel masks, computed by slicing rather than multiplying by a mask, so a
  narrow path costs what its stand-alone model costs);
- DW kernels: each DW slot holds a separate 3x3 and 5x5 depthwise conv, each with its own BN; absent is identity.
  The PW expansion and projection -- almost all the weights -- are shared by every instantiation (paper §4: ">95%
  parameter sharing"). Separate small DW kernels instead of a 5x5 whose centre is the 3x3 keep each kernel's BN
  statistics its own and make a sampled path exactly a stand-alone model;
- depth: the blocks beyond a stage's chosen depth are not run (identity).

The stem, the fixed early stages, the head row's BN and the pooled head are ordinary modules (``blocks.py``,
``layers.py``) and every tensor has the state-dict name of the stand-alone ``MobileNetV4`` it maps to
(``blocks.<stage>.<block>...``), plus the kernel size for DW slots (``dw_mid.5.conv.weight``). ``extract`` copies a
path's weights (and BN statistics) into a stand-alone model of the decoded spec, which then gives the same logits.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from ..blocks import ConvBlock, FusedIB
from ..layers import BatchNormAct2d, ConvNormAct, conv2d, init_weights_goog, make_divisible
from ..model import MobileNetV4
from ..specs import Conv, ModelSpec
from ..specs import FusedIB as FusedIBRow
from .space import Arch, BlockPath, SearchSpace, StagePath


def _sliced_bn(bn: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    """``bn`` (and its activation) on the first ``x.shape[1]`` channels; running statistics are updated in place on
    that slice, with nn.BatchNorm2d's momentum rules (None = cumulative average)."""
    k = x.shape[1]
    factor = 0.0
    if bn.training and bn.track_running_stats:
        bn.num_batches_tracked.add_(1)
        factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    y = F.batch_norm(x, bn.running_mean[:k], bn.running_var[:k], bn.weight[:k], bn.bias[:k], bn.training, factor,
                     bn.eps)
    act = getattr(bn, "act", None)
    return act(y) if act is not None else y


def _sliced_conv(conv: nn.Conv2d, x: torch.Tensor, out_ch: int, depthwise: bool = False) -> torch.Tensor:
    if depthwise:
        return F.conv2d(x, conv.weight[:out_ch], None, conv.stride, conv.padding, 1, out_ch)
    return F.conv2d(x, conv.weight[:out_ch, : x.shape[1]], None, conv.stride, conv.padding)


def _conv_norm_act(m: ConvNormAct, x: torch.Tensor, out_ch: int, depthwise: bool = False) -> torch.Tensor:
    return _sliced_bn(m.bn, _sliced_conv(m.conv, x, out_ch, depthwise))


class SuperUIB(nn.Module):
    """One UIB slot: start DW (3x3 / 5x5 / identity) -> 1x1 expansion -> middle DW -> 1x1 projection, all sliced."""

    def __init__(self, in_max: int, out_max: int, mid_max: int, start_kernels, mid_kernels, stride: int, act: str):
        super().__init__()
        self.stride = stride
        self.dw_start = nn.ModuleDict(
            {str(k): ConvNormAct(in_max, in_max, k, 1, groups=in_max, act=None) for k in start_kernels if k}
        )
        self.pw_exp = ConvNormAct(in_max, mid_max, 1, act=act)
        self.dw_mid = nn.ModuleDict(
            {str(k): ConvNormAct(mid_max, mid_max, k, stride, groups=mid_max, act=act) for k in mid_kernels if k}
        )
        self.pw_proj = ConvNormAct(mid_max, out_max, 1, act=None)

    @staticmethod
    def _dw_slot(slot: nn.ModuleDict, x: torch.Tensor, kernels: tuple[int, ...]) -> torch.Tensor:
        outs = [x if k == 0 else _conv_norm_act(slot[str(k)], x, x.shape[1], depthwise=True) for k in kernels]
        return outs[0] if len(outs) == 1 else torch.stack(outs).mean(0)  # all ops on: their mean (TuNAS)

    def forward(self, x: torch.Tensor, path: BlockPath, out_ch: int) -> torch.Tensor:
        in_ch = x.shape[1]
        shortcut = x
        x = self._dw_slot(self.dw_start, x, path.start)
        x = _conv_norm_act(self.pw_exp, x, make_divisible(in_ch * path.expand))
        x = self._dw_slot(self.dw_mid, x, path.mid)
        x = _conv_norm_act(self.pw_proj, x, out_ch)
        return x + shortcut if self.stride == 1 and in_ch == out_ch else x


class SuperHeadConv(ConvBlock):
    """The head row (1x1 conv -> fixed width, BN + act) with the input channels of the chosen last-stage width."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _sliced_bn(self.bn1, _sliced_conv(self.conv, x, self.conv.out_channels))


def _fixed_block(row, in_ch: int, act: str) -> nn.Module:
    if isinstance(row, Conv):
        return ConvBlock(in_ch, row.out, row.kernel, row.stride, act)
    if isinstance(row, FusedIBRow):
        return FusedIB(in_ch, row.out, row.kernel, row.stride, row.expand, act)
    raise TypeError(f"fixed stages take Conv and FusedIB rows, got {type(row).__name__}")


class SuperNet(nn.Module):
    """Every architecture of ``space`` in one network: ``supernet(images, space.path(arch))``."""

    def __init__(self, space: SearchSpace, num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.0):
        super().__init__()
        self.space, self.num_classes, self.in_chans, self.drop_rate = space, num_classes, in_chans, drop_rate
        self.conv_stem = conv2d(in_chans, space.stem, 3, stride=2)
        self.bn1 = BatchNormAct2d(space.stem, space.act)
        stages: list[nn.Module] = []
        in_ch = space.stem
        for rows in space.fixed:
            blocks = []
            for row in rows:
                blocks.append(_fixed_block(row, in_ch, space.act))
                in_ch = row.out
            stages.append(nn.Sequential(*blocks))
        for s, stage in enumerate(space.stages):
            ins = space.input_widths(s)
            slots = []
            for b in range(stage.max_depth):
                in_widths = ins if b == 0 else stage.widths
                mid_max = max(make_divisible(c * e) for c in in_widths for e in stage.expansions)
                slots.append(SuperUIB(max(in_widths), max(stage.widths), mid_max, stage.start_dw,
                                      stage.mid_choices(b), 2 if b == 0 else 1, space.act))
            stages.append(nn.ModuleList(slots))
        head = space.head
        stages.append(nn.Sequential(SuperHeadConv(max(space.stages[-1].widths), head.out, head.kernel, 1, space.act)))
        self.blocks = nn.ModuleList(stages)
        self.conv_head = nn.Conv2d(head.out, space.head_hidden, 1, bias=False)
        self.norm_head = BatchNormAct2d(space.head_hidden, space.act)
        self.classifier = nn.Linear(space.head_hidden, num_classes)
        init_weights_goog(self)
        # plain list (not registered): frozen_bn_statistics visits these instead of every module
        self.__dict__["batch_norms"] = [m for m in self.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    def forward(self, x: torch.Tensor, path: tuple[StagePath, ...]) -> torch.Tensor:
        x = self.bn1(self.conv_stem(x))
        n_fixed = len(self.space.fixed)
        for stage in self.blocks[:n_fixed]:
            x = stage(x)
        for slots, stage_path in zip(self.blocks[n_fixed:-1], path, strict=True):
            for slot, block_path in zip(slots, stage_path.blocks, strict=False):
                x = slot(x, block_path, stage_path.width)
        x = self.blocks[-1](x)
        x = self.norm_head(self.conv_head(x.mean((2, 3), keepdim=True))).flatten(1)
        if self.drop_rate > 0.0:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return self.classifier(x)

    def forward_arch(self, x: torch.Tensor, arch: Arch) -> torch.Tensor:
        return self(x, self.space.path(arch))

    # ------------------------------------------------------------------------------------------- extraction
    _DW_KEY = re.compile(r"^blocks\.(\d+)\.(\d+)\.(dw_start|dw_mid)\.(.*)$")

    def source_key(self, key: str, spec: ModelSpec) -> str:
        """The supernet tensor a stand-alone state-dict key of ``spec`` is sliced from."""
        m = self._DW_KEY.match(key)
        if not m:
            return key
        stage, block, slot, rest = int(m.group(1)), int(m.group(2)), m.group(3), m.group(4)
        row = spec.stages[stage][block]
        kernel = row.start_dw if slot == "dw_start" else row.mid_dw
        return f"blocks.{stage}.{block}.{slot}.{kernel}.{rest}"

    @torch.no_grad()
    def extract(self, arch: Arch, spec: ModelSpec | None = None) -> MobileNetV4:
        """A stand-alone ``MobileNetV4`` of ``arch`` holding this supernet's weights and BN statistics for that path
        (every tensor the first k channels of its supernet tensor). Same mode (train/eval) as the supernet."""
        spec = spec or self.space.decode(arch)
        model = MobileNetV4(spec, num_classes=self.num_classes, in_chans=self.in_chans, drop_rate=self.drop_rate)
        source = self.state_dict()
        state = {}
        for key, target in model.state_dict().items():
            tensor = source[self.source_key(key, spec)]
            state[key] = tensor[tuple(slice(0, n) for n in target.shape)].clone()
        model.load_state_dict(state, strict=True)
        return model.train(self.training)


class FixedPath(nn.Module):
    """The supernet restricted to one path, as an ordinary ``model(images)`` module (calibration, evaluation)."""

    def __init__(self, supernet: SuperNet, path: tuple[StagePath, ...]):
        super().__init__()
        self.supernet, self.path = supernet, path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.supernet(x, self.path)


@contextmanager
def frozen_bn_statistics(model: nn.Module) -> Iterator[None]:
    """Score with batch statistics without touching the running ones: every BN normalises with its input's
    statistics, momentum 0 leaves the running statistics as they are (their counters are restored), and the
    top-level module's own dropout is off. Only BN modules are visited (a supernet has hundreds of modules)."""
    bns = getattr(model, "batch_norms", None)
    if bns is None:
        bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(bn.training, bn.momentum, bn.num_batches_tracked.clone()) for bn in bns]
    was_training = model.training
    model.training = False
    for bn in bns:
        bn.training, bn.momentum = True, 0.0
    try:
        yield
    finally:
        model.training = was_training
        for bn, (training, momentum, count) in zip(bns, saved, strict=True):
            bn.training, bn.momentum = training, momentum
            bn.num_batches_tracked.copy_(count)
