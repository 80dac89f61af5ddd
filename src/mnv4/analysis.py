"""Counting: parameters, and per-layer MACs and tensor sizes (the input of the roofline model, paper §3 and App. F).

What is counted as MACs (multiply-accumulates, one per multiply-add; 1 MAC = 2 FLOPs), and only this:
- every ``nn.Conv2d``: output elements x (input channels / groups) x kernel height x kernel width;
- the fixed 3x3 depthwise blur of ``BlurPool2d`` (the 'blurpc' anti-aliased variant) like any depthwise conv;
- every ``nn.Linear``: output elements x input features;
- the two attention matmuls of each Mobile MQA block: Q K^T and softmax(.) V, i.e. heads x N x M x (key dim + value
  dim) for N query positions and M key/value positions (the same for multi-head attention, which only reads more
  keys and values).
BatchNorm, activations, pooling, softmax, residual adds and layer scale are not counted (as in the paper and timm).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from functools import lru_cache

import torch
from torch import nn

from .blocks import MultiQueryAttention2d
from .errors import UserError
from .layers import BlurPool2d, make_divisible
from .model import _round_width
from .specs import MQA, UIB, Conv, ModelSpec, Row
from .specs import FusedIB as FusedIBRow


@dataclass(frozen=True)
class LayerProfile:
    """One counted layer for a single image: MACs and element counts of its weights, input and output."""

    name: str
    kind: str  # 'conv', 'dwconv', 'linear' or 'attention'
    macs: int
    weight_elems: int
    input_elems: int
    output_elems: int
    shape: str  # e.g. '3x3 dw 640 @16x16' -- for tables


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


@torch.no_grad()
def profile_layers(model: nn.Module, input_size: tuple[int, int], in_chans: int | None = None) -> list[LayerProfile]:
    """Run one image of ``input_size`` (H, W) through ``model`` in eval mode and record every counted layer."""
    in_chans = in_chans or getattr(model, "in_chans", 3)
    records: list[LayerProfile] = []
    hooks = []

    def conv_hook(name: str):
        def hook(m: nn.Conv2d, inputs, output):
            x = inputs[0]
            k = m.kernel_size[0] * m.kernel_size[1]
            per_out = m.in_channels // m.groups * k
            depthwise = m.groups == m.in_channels and m.groups > 1
            records.append(
                LayerProfile(
                    name,
                    "dwconv" if depthwise else "conv",
                    output[0].numel() * per_out,
                    m.weight.numel() + (m.bias.numel() if m.bias is not None else 0),
                    x[0].numel(),
                    output[0].numel(),
                    f"{m.kernel_size[0]}x{m.kernel_size[1]}{' dw' if depthwise else ''} "
                    f"{m.in_channels}->{m.out_channels} s{m.stride[0]} @{x.shape[-2]}x{x.shape[-1]}",
                )
            )

        return hook

    def blur_hook(name: str):
        def hook(m: BlurPool2d, inputs, output):
            x = inputs[0]
            records.append(
                LayerProfile(
                    name, "dwconv", output[0].numel() * 9, 0, x[0].numel(), output[0].numel(),
                    f"blur 3x3 dw {m.channels} s{m.stride} @{x.shape[-2]}x{x.shape[-1]}",
                )
            )

        return hook

    def linear_hook(name: str):
        def hook(m: nn.Linear, inputs, output):
            records.append(
                LayerProfile(
                    name, "linear", output[0].numel() * m.in_features,
                    m.weight.numel() + (m.bias.numel() if m.bias is not None else 0),
                    inputs[0][0].numel(), output[0].numel(), f"linear {m.in_features}->{m.out_features}",
                )
            )

        return hook

    def attention_hook(name: str):
        def hook(m: MultiQueryAttention2d, inputs, output):
            H, W = inputs[0].shape[-2:]
            n = H * W
            keys = m.num_keys(H, W)
            # Reads Q (h*N*d), K (M*d), V (M*dv) -- K and V once per head for multi-head attention (``kv_heads``
            # = h, mnv4.nas.studies); writes the attention output (h*N*dv).
            kv_heads = getattr(m, "kv_heads", 1)
            records.append(
                LayerProfile(
                    f"{name}.matmuls", "attention", m.attention_macs(H, W), 0,
                    m.num_heads * n * m.key_dim + kv_heads * keys * (m.key_dim + m.value_dim),
                    m.num_heads * n * m.value_dim,
                    f"{'MQA' if kv_heads == 1 else 'MHSA'} {m.num_heads}h x d{m.key_dim}, {n} queries x {keys} keys",
                )
            )

        return hook

    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(conv_hook(name)))
        elif isinstance(m, BlurPool2d):
            hooks.append(m.register_forward_hook(blur_hook(name)))
        elif isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(linear_hook(name)))
        elif isinstance(m, MultiQueryAttention2d):
            hooks.append(m.register_forward_hook(attention_hook(name)))
    was_training = model.training
    model.eval()
    try:
        param = next(model.parameters())
        model(torch.zeros(1, in_chans, *input_size, device=param.device, dtype=param.dtype))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return records


def count_macs(model: nn.Module, input_size: tuple[int, int]) -> int:
    """MACs for one image (convs + linears + attention matmuls; see the module docstring)."""
    return sum(r.macs for r in profile_layers(model, input_size))


# ---------------------------------------------------------------------------------------------------- from the table
# ``profile_spec`` gives ``profile_layers(create_model(spec), size)`` record for record -- names, shapes and counts --
# from the layer table alone, without building or running a network: a cost model inside an architecture search
# evaluates thousands of tables. The network splits into parts (stem, one per table row, head) whose records depend
# only on the part's own geometry, so the records of a part are computed once and shared by every table that has
# the same part at the same place in the resolution pyramid. tests/test_nas_cost.py checks the equality on every
# registered variant and on random tables.


@dataclass(frozen=True)
class SpecPart:
    """One part of a MobileNetV4 as its table fixes it: hashable, and all that the part's cost depends on.

    ``kind`` is 'stem', 'block' or 'head'; ``row`` the table row of a block (None otherwise); ``in_ch`` / ``out_ch``
    the channels after the width multiplier (the head: final features -> ``head_hidden``); ``size`` the input
    (H, W); ``num_classes`` the classifier width of the head (0 = no classifier).
    """

    kind: str
    row: Row | None
    in_ch: int
    out_ch: int
    size: tuple[int, int]
    act: str
    aa: str | None = None
    num_classes: int = 0

    def key(self) -> str:
        """A stable one-line description (the key of on-disk tables such as the NAS latency table)."""
        h, w = self.size
        if self.kind == "stem":
            what = "stem Conv(kernel=3, stride=2)"
        elif self.kind == "head":
            what = f"head pool-1x1 hidden={self.out_ch} classes={self.num_classes}"
        else:
            row = ", ".join(f"{f.name}={getattr(self.row, f.name):g}" for f in fields(self.row))
            what = f"{type(self.row).__name__}({row})"
        return f"{what} in={self.in_ch} out={self.out_ch} size={h}x{w} act={self.act} aa={self.aa}"


def _conv_size(size: tuple[int, int], kernel: int, stride: int) -> tuple[int, int]:
    """Output size of ``layers.conv2d`` (padding (k - 1) // 2 each side)."""
    pad = (kernel - 1) // 2
    return tuple((s + 2 * pad - kernel) // stride + 1 for s in size)


def _conv(name: str, in_ch: int, out_ch: int, kernel: int, stride: int, size: tuple[int, int], groups: int = 1):
    """The record ``profile_layers`` writes for a bias-free ``conv2d``, and the output size."""
    out_size = _conv_size(size, kernel, stride)
    outputs = out_ch * out_size[0] * out_size[1]
    depthwise = groups == in_ch and groups > 1
    record = LayerProfile(
        name, "dwconv" if depthwise else "conv", outputs * (in_ch // groups) * kernel * kernel,
        out_ch * (in_ch // groups) * kernel * kernel, in_ch * size[0] * size[1], outputs,
        f"{kernel}x{kernel}{' dw' if depthwise else ''} {in_ch}->{out_ch} s{stride} @{size[0]}x{size[1]}",
    )
    return record, out_size


def _conv_pool(conv_name: str, pool_name: str, in_ch: int, out_ch: int, kernel: int, stride: int,
               size: tuple[int, int], aa: str | None, groups: int = 1):
    """A conv whose stride moves to an anti-aliasing pool after it when ``aa`` is set (``ConvNormAct``,
    ``ConvBlock``, ``FusedIB``): the conv record, the blur record ('blurpc'; average pooling is not counted)."""
    use_aa = aa is not None and stride > 1
    record, size = _conv(conv_name, in_ch, out_ch, kernel, 1 if use_aa else stride, size, groups)
    records = [record]
    if use_aa and aa == "blurpc":
        pooled = _conv_size(size, 3, 2)
        records.append(LayerProfile(
            pool_name, "dwconv", out_ch * pooled[0] * pooled[1] * 9, 0, out_ch * size[0] * size[1],
            out_ch * pooled[0] * pooled[1], f"blur 3x3 dw {out_ch} s2 @{size[0]}x{size[1]}",
        ))
        size = pooled
    elif use_aa:  # 'avg': nn.AvgPool2d(2), floor
        size = (size[0] // 2, size[1] // 2)
    return records, size


def _norm_conv(prefix: str, in_ch: int, out_ch: int, kernel: int, stride: int, size, aa=None, groups: int = 1):
    """``ConvNormAct`` named ``prefix``: records ``prefix.conv`` (and ``prefix.aa``)."""
    return _conv_pool(f"{prefix}.conv", f"{prefix}.aa", in_ch, out_ch, kernel, stride, size, aa, groups)


def _block_records(part: SpecPart) -> tuple[list[LayerProfile], tuple[int, int]]:
    row, c_in, c_out, size, aa = part.row, part.in_ch, part.out_ch, part.size, part.aa
    if isinstance(row, Conv):
        return _conv_pool("conv", "aa", c_in, c_out, row.kernel, row.stride, size, aa)
    if isinstance(row, FusedIBRow):
        mid = make_divisible(c_in * row.expand)
        records, size = _conv_pool("conv_exp", "aa", c_in, mid, row.kernel, row.stride, size, aa)
        record, size = _conv("conv_pwl", mid, c_out, 1, 1, size)
        return [*records, record], size
    if isinstance(row, UIB):
        mid, records = make_divisible(c_in * row.expand), []
        if row.start_dw:
            start_stride = 1 if row.mid_dw else row.stride
            more, size = _norm_conv("dw_start", c_in, c_in, row.start_dw, start_stride, size, aa, groups=c_in)
            records += more
        more, size = _norm_conv("pw_exp", c_in, mid, 1, 1, size)
        records += more
        if row.mid_dw:
            more, size = _norm_conv("dw_mid", mid, mid, row.mid_dw, row.stride, size, aa, groups=mid)
            records += more
        more, size = _norm_conv("pw_proj", mid, c_out, 1, 1, size)
        return records + more, size
    if isinstance(row, MQA):
        return _mqa_records(c_in, row.heads, row.head_dim, row.kv_stride, size), size
    raise TypeError(f"unknown row type {type(row).__name__}")


def _mqa_records(channels: int, heads: int, dim: int, kv_stride: int, size: tuple[int, int]) -> list[LayerProfile]:
    """``MobileMQA`` (K/V down-conv kernel 3), in the order its forward hooks fire."""
    records = [_conv("attn.query.proj", channels, heads * dim, 1, 1, size)[0]]
    kv_size = size
    for branch in ("key", "value"):
        kv_size = size
        if kv_stride > 1:
            record, kv_size = _conv(f"attn.{branch}.down_conv", channels, channels, 3, kv_stride, size, channels)
            records.append(record)
        records.append(_conv(f"attn.{branch}.proj", channels, dim, 1, 1, kv_size)[0])
    records.append(_conv("attn.output.proj", heads * dim, channels, 1, 1, size)[0])
    n, keys = size[0] * size[1], kv_size[0] * kv_size[1]
    records.append(LayerProfile(
        "attn.matmuls", "attention", heads * n * keys * 2 * dim, 0, heads * n * dim + keys * 2 * dim, heads * n * dim,
        f"MQA {heads}h x d{dim}, {n} queries x {keys} keys",
    ))
    return records


@lru_cache(maxsize=1 << 16)
def part_profile(part: SpecPart) -> tuple[tuple[LayerProfile, ...], tuple[int, int]]:
    """The records of one part (names relative to the part's module; the stem's and head's are the model's own)
    and its output size. Cached: a search evaluates the same parts again and again."""
    if part.kind == "stem":
        record, size = _conv("conv_stem", part.in_ch, part.out_ch, 3, 2, part.size)
        return (record,), size
    if part.kind == "head":  # global pool -> conv_head (1x1 on the pooled 1x1 map) -> classifier
        records = [_conv("conv_head", part.in_ch, part.out_ch, 1, 1, (1, 1))[0]]
        if part.num_classes:
            n, hidden = part.num_classes, part.out_ch
            records.append(LayerProfile("classifier", "linear", n * hidden, n * hidden + n, hidden, n,
                                        f"linear {hidden}->{n}"))
        return tuple(records), (1, 1)
    records, size = _block_records(part)
    return tuple(records), size


def spec_parts(
    spec: ModelSpec, input_size: int | tuple[int, int], in_chans: int = 3, num_classes: int = 1000
) -> list[tuple[str, SpecPart]]:
    """(module name, part) for the stem, every table row and the head of ``MobileNetV4(spec, num_classes,
    in_chans)`` on an ``input_size`` image (module names: '' for the stem and head, 'blocks.<stage>.<block>')."""
    size = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    # The stem keeps its width under a multiplier < 1 (timm ``fix_stem``), as MobileNetV4.__init__ does.
    width = spec.stem if spec.width < 1.0 else _round_width(spec.stem, spec.width)
    stem = SpecPart("stem", None, in_chans, width, size, spec.act)
    parts = [("", stem)]
    size = part_profile(stem)[1]
    for si, stage in enumerate(spec.stages):
        for bi, row in enumerate(stage):
            out = _round_width(row.out, spec.width)
            part = SpecPart("block", row, width, out, size, spec.act, spec.aa)
            parts.append((f"blocks.{si}.{bi}", part))
            size, width = part_profile(part)[1], out
    parts.append(("", SpecPart("head", None, width, spec.head_hidden, size, spec.act, None, num_classes)))
    return parts


def profile_spec(
    spec: ModelSpec, input_size: int | tuple[int, int], in_chans: int = 3, num_classes: int = 1000
) -> list[LayerProfile]:
    """``profile_layers(MobileNetV4(spec, num_classes, in_chans), input_size)`` from the table alone, record for
    record, two to three orders of magnitude faster (no network is built or run; benchmarks/nas_cost.py).
    ``input_size``: an int (square) or (H, W). The table is taken as it is (``specs.validate_spec`` checks one)."""
    records = []
    for prefix, part in spec_parts(spec, input_size, in_chans, num_classes):
        for record in part_profile(part)[0]:
            records.append(replace(record, name=f"{prefix}.{record.name}") if prefix else record)
    return records


def memory_needed(spec: ModelSpec, input_size: int, num_classes: int = 1000) -> tuple[int, int]:
    """(weight bytes, activation bytes) of ``MobileNetV4(spec)`` in fp32 for one ``input_size`` image, from the table
    alone: the weights of every counted layer, and the largest input + output of any layer (what a forward pass holds
    at its peak, at the least)."""
    records = profile_spec(spec, input_size, num_classes=num_classes)
    weights = sum(r.weight_elems for r in records)
    peak = max(r.input_elems + r.output_elems for r in records)
    return 4 * weights, 4 * peak


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation on this machine (Linux's MemAvailable), None where unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_fits(spec: ModelSpec, num_classes: int = 1000) -> None:
    """Refuse, before anything is allocated, an architecture whose weights or whose forward pass on one image at its
    own resolution would not fit in this machine's memory (a spec file with widths or a resolution off by orders of
    magnitude would otherwise take the machine down, or fail deep in PyTorch)."""
    free = available_memory()
    if free is None:
        return
    weights, activations = memory_needed(spec, spec.resolution, num_classes)
    for what, size in (("its weights", weights), (f"one {spec.resolution} px image's forward pass", activations)):
        if size > free:
            raise UserError(f"{spec.name} would need {size / 2**30:.1f} GiB for {what} alone (fp32); this machine has "
                            f"{free / 2**30:.1f} GiB available -- check the spec's widths and resolution")
