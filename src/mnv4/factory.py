"""``create_model`` / ``list_models``: the entry points, with timm's names and arguments (``timm.create_model``)."""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Sequence

from .analysis import check_fits
from .errors import UserError
from .model import MobileNetV4
from .specs import MODEL_SPECS, ModelSpec, closest_names, get_spec, is_spec_file  # noqa: F401 (re-exported)


def list_models(pattern: str = "*") -> list[str]:
    """Names of the registered variants matching a shell-style ``pattern`` (e.g. ``'*hybrid*'``), sorted."""
    return sorted(name for name in MODEL_SPECS if fnmatch.fnmatch(name, pattern))


def create_model(
    name: str | os.PathLike | ModelSpec,
    pretrained: bool | str | os.PathLike = False,
    num_classes: int | None = None,
    in_chans: int = 3,
    drop_rate: float = 0.0,
    drop_path_rate: float = 0.0,
    features_only: bool = False,
    out_indices: int | Sequence[int] | None = None,
    attn_impl: str = "sdpa",
    use_ema: bool = True,
    global_pool: str = "avg",
    feature_cls: str | None = None,
    output_stride: int = 32,
) -> MobileNetV4:
    """Build a MobileNetV4 variant by name (``mnv4.list_models()``), ``variant.tag`` (``mnv4.list_pretrained()``),
    spec file (``*.json``, e.g. from ``mnv4 search``) or ``ModelSpec``.

    ``pretrained``: False = random init as timm does; True = the tag's weights from the Hugging Face hub (a bare
    variant name means its default tag), through the hub cache and ``HF_HUB_OFFLINE``; a path = a local
    ``.safetensors`` (or ``.pth``/``.bin``/``.pt``, read with ``torch.load(weights_only=True)``), also a timm
    ``train.py`` checkpoint (its ``state_dict_ema`` when ``use_ema``, else ``state_dict``).

    ``num_classes``: None = the checkpoint's (1000, or 11821 for the ImageNet-12k tags; 1000 without weights). A
    different number drops the checkpoint's classifier and initialises a new one (one logged message).

    ``features_only=True`` gives a model whose forward returns the feature maps at ``out_indices`` of the 5 levels
    (reductions 2, 4, 8, 16, 32), shallow to deep, as a list or (``feature_cls='dict'``) an ``OrderedDict`` keyed by
    level number (``'0'``..``'4'``); ``feature_cls='getter'``, timm's ``FeatureGetterNet`` form over
    ``forward_intermediates``, gives the same list as the default. ``model.feature_info`` describes the maps (timm's
    dicts: ``num_chs``, ``reduction``, ``module``, ``index``, ``stage``; ``.channels()`` / ``.reduction()``).

    ``global_pool``: ``'avg'`` (trained), ``'max'``, or ``''`` with ``num_classes=0``: the head runs unpooled and the
    model returns ``(B, 1280, H/32, W/32)`` (timm's behaviour for its MobileNetV3/V4 class).

    ``output_stride``: 32 (the classifier), or 16 / 8 for a dense-prediction backbone: the later stages run
    undownsampled with dilated convs (``mnv4.model.row_geometry``, TF Model Garden's rule); the weights are the same,
    so ``pretrained`` works at any output stride (docs/segmentation.md).

    ``model.pretrained_cfg`` (also ``model.default_cfg``) holds the tag's config with timm's fields (``input_size``,
    ``pool_size``, ``mean``, ...; ``mnv4.data_config(model)`` reads it); without a tag, that of the variant's
    default tag, as timm does. A ``features_only`` model's has no ``num_classes`` / ``classifier`` (as timm's).
    """
    from . import weights

    if isinstance(pretrained, (int, float)) and not isinstance(pretrained, bool):
        raise UserError(
            f"pretrained must be True/False or a path to a weights file, got {pretrained!r}; "
            "pass num_classes by keyword: create_model(name, num_classes=...)"
        )
    if isinstance(name, ModelSpec) or is_spec_file(name):
        spec, tag = get_spec(name), None
        if pretrained is True:
            raise UserError(
                f"{spec.name} is a custom architecture with no released weights; pass pretrained='path/to/weights'"
            )
    else:
        arch, tag = weights.split_name(name)
        spec = get_spec(arch)
    state_dict, source = None, None
    if pretrained is True:
        tag = tag or weights.default_tag(spec.name)
        path = weights.download(tag)
        state_dict, source = weights.read_state_dict(path, use_ema), f"{tag.name} ({path})"
    elif pretrained:
        path = os.fspath(pretrained)
        state_dict, source = weights.read_state_dict(path, use_ema), path
    if num_classes is None:
        if state_dict is not None and "classifier.weight" in state_dict:
            num_classes = int(state_dict["classifier.weight"].shape[0])
        elif state_dict is None and tag is not None:
            num_classes = tag.num_classes
        else:
            num_classes = 1000
    check_fits(spec, num_classes)
    model = MobileNetV4(
        spec,
        num_classes=num_classes,
        in_chans=in_chans,
        drop_rate=drop_rate,
        drop_path_rate=drop_path_rate,
        features_only=features_only,
        out_indices=out_indices,
        attn_impl=attn_impl,
        global_pool=global_pool,
        feature_cls=feature_cls,
        output_stride=output_stride,
    )
    cfg = tag.to_cfg() if tag is not None else weights.default_cfg(spec)
    model.pretrained_cfg = weights.cfg_for_features(cfg) if features_only else cfg
    model.pretrained_cfg["weights"] = source  # None: random init
    if state_dict is not None:
        weights.load_weights(model, state_dict, source)
    return model
