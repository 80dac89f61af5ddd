"""Pretrained weights: the registry of released tags, and loading checkpoints into a model.

Google never released MobileNetV4 checkpoints; the only public ones are the 24 tags timm trained and published on the
Hugging Face hub as ``timm/<variant>.<tag>``. Their key names are the ones this package uses, so they load strictly.
The table below holds the FACTS of each tag: facts from timm 1.0.x ``timm/models/mobilenetv3.py`` ``default_cfgs``
(sizes, crops, mean/std, classes) and top-1 from timm's ``results/results-imagenet.csv`` (docs/weights.md lists
them). Top-5 figures were not in the sources read, so they are ``None`` (reported as unknown, never invented).

Loading accepts, and never unpickles arbitrary objects:
- ``*.safetensors`` (the hub format);
- ``*.pth`` / ``*.pt`` / ``*.bin`` / ``*.ckpt`` only through ``torch.load(weights_only=True)``;
- timm ``train.py`` checkpoints (``state_dict`` / ``state_dict_ema`` / ``model`` / ``model_ema`` keys) and DDP
  ``module.`` prefixes.
"""

from __future__ import annotations

import fnmatch
import functools
import logging
import os
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .errors import UserError
from .specs import MODEL_SPECS, ModelSpec, closest_names, get_spec

logger = logging.getLogger("mnv4")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INCEPTION_MEAN = (0.5, 0.5, 0.5)  # "Inception" normalisation, used by some tags
INCEPTION_STD = (0.5, 0.5, 0.5)
HUB_FILENAME = "model.safetensors"
HEAD_PREFIXES = ("conv_head.", "norm_head.", "classifier.")
CLASSIFIER_KEYS = ("classifier.weight", "classifier.bias")
TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".tar")


@dataclass(frozen=True)
class PretrainedTag:
    """One released (or, with ``released=False``, config-only) weight set of a variant.

    ``input_size`` / ``crop_pct``: the train resolution and the crop timm evaluates it with; ``test_input_size`` /
    ``test_crop_pct``: the larger evaluation resolution that scores higher (None: none published).
    ``top1`` is ImageNet-1k top-1 at ``input_size``, ``test_top1`` at ``test_input_size``.
    """

    arch: str
    tag: str
    num_classes: int
    input_size: int
    crop_pct: float
    test_input_size: int | None
    test_crop_pct: float | None
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    top1: float | None = None
    test_top1: float | None = None
    top5: float | None = None
    test_top5: float | None = None
    released: bool = True
    interpolation: str = "bicubic"  # every MNv4 cfg in timm is bicubic

    @property
    def name(self) -> str:
        return f"{self.arch}.{self.tag}"

    @property
    def hf_hub_id(self) -> str | None:
        return f"timm/{self.name}" if self.released else None

    @property
    def dataset(self) -> str:
        return "imagenet-12k" if self.num_classes == 11821 else "imagenet-1k"

    def to_cfg(self) -> dict:
        """The model's ``pretrained_cfg``: timm's fields with timm's values (``None`` where timm has no entry), so
        timm's ``resolve_data_config`` and test helpers read it too, plus the published accuracy."""
        test = self.test_input_size
        pool = -(-self.input_size // 32)  # the /32 map's size (each stride-2 conv rounds up; timm's sizes are x32)
        return {
            "url": "",
            "hf_hub_id": self.hf_hub_id,
            "architecture": self.arch,
            "tag": self.tag,
            "custom_load": False,
            "input_size": (3, self.input_size, self.input_size),
            "test_input_size": (3, test, test) if test else None,
            "fixed_input_size": False,
            "interpolation": self.interpolation,
            "crop_pct": self.crop_pct,
            "test_crop_pct": self.test_crop_pct,
            "crop_mode": "center",
            "mean": self.mean,
            "std": self.std,
            "num_classes": self.num_classes,
            "pool_size": (pool, pool),
            "first_conv": "conv_stem",
            "classifier": "classifier",
            "license": "apache-2.0",
            "top1": self.top1,
            "top5": self.top5,
            "test_top1": self.test_top1,
            "test_top5": self.test_top5,
        }


IN = (IMAGENET_MEAN, IMAGENET_STD)
INC = (INCEPTION_MEAN, INCEPTION_STD)
K12 = 11821  # ImageNet-12k head (timm's in12k subset of ImageNet-21k)


def _t(arch, tag, classes, size, crop, test, test_crop, norm, top1=None, test_top1=None, released=True):
    return PretrainedTag(
        f"mobilenetv4_{arch}", tag, classes, size, crop, test, test_crop, norm[0], norm[1], top1, test_top1,
        released=released,
    )


# One row per tag, in timm's default_cfgs order: the FIRST row of a variant is its default tag (what a bare variant
# name and pretrained=True resolve to). Columns: variant, tag, classes, train size, crop_pct, test size, test crop,
# normalisation, top-1 @ train size, top-1 @ test size.
# fmt: off
TAGS: tuple[PretrainedTag, ...] = (
    _t("conv_small_035",    "untrained",               1000, 224, 0.875, 256,  0.95, INC, released=False),
    _t("conv_small_050",    "e3000_r224_in1k",         1000, 224, 0.875, 256,  0.95, INC, 64.778, 65.826),
    _t("conv_small",        "e2400_r224_in1k",         1000, 224, 0.875, 256,  0.95, IN,  73.756, 74.644),
    _t("conv_small",        "e1200_r224_in1k",         1000, 224, 0.875, 256,  0.95, IN,  73.450, 74.282),
    _t("conv_small",        "e3600_r256_in1k",         1000, 256, 0.95,  320,  1.0,  INC, 74.534, 75.616),
    _t("conv_medium",       "e500_r256_in1k",          1000, 256, 0.95,  320,  1.0,  IN,  79.916, 80.890),
    _t("conv_medium",       "e500_r224_in1k",          1000, 224, 0.95,  256,  1.0,  IN,  79.092, 79.836),
    _t("conv_medium",       "e250_r384_in12k_ft_in1k", 1000, 384, 0.95,  None, None, IN,  82.776),
    _t("conv_medium",       "e180_r384_in12k",         K12,  384, 1.0,   None, None, IN),
    _t("conv_medium",       "e180_ad_r384_in12k",      K12,  384, 1.0,   None, None, IN),
    _t("conv_medium",       "e250_r384_in12k",         K12,  384, 1.0,   None, None, IN),
    _t("conv_large",        "e600_r384_in1k",          1000, 384, 0.95,  448,  1.0,  IN,  82.974, 83.418),
    _t("conv_large",        "e500_r256_in1k",          1000, 256, 0.95,  320,  1.0,  IN,  81.864, 82.672),
    _t("hybrid_medium",     "e200_r256_in12k_ft_in1k", 1000, 256, 0.95,  320,  1.0,  IN,  82.360, 82.998),
    _t("hybrid_medium",     "ix_e550_r256_in1k",       1000, 256, 0.95,  320,  1.0,  IN,  81.478, 82.500),
    _t("hybrid_medium",     "ix_e550_r384_in1k",       1000, 384, 0.95,  448,  1.0,  IN,  82.952, 83.390),
    _t("hybrid_medium",     "e500_r224_in1k",          1000, 224, 0.95,  256,  1.0,  IN,  80.432, 81.284),
    _t("hybrid_medium",     "e200_r256_in12k",         K12,  256, 0.95,  320,  1.0,  IN),
    _t("hybrid_large",      "ix_e600_r384_in1k",       1000, 384, 0.95,  448,  1.0,  IN,  83.996, 84.352),
    _t("hybrid_large",      "e600_r384_in1k",          1000, 384, 0.95,  448,  1.0,  IN,  83.826, 84.264),
    _t("conv_aa_medium",    "untrained",               1000, 256, 0.95,  None, None, IN,  released=False),
    _t("conv_blur_medium",  "e500_r224_in1k",          1000, 224, 0.95,  256,  1.0,  IN,  79.446, 80.152),
    _t("conv_aa_large",     "e230_r448_in12k_ft_in1k", 1000, 448, 0.95,  544,  1.0,  IN,  84.668, 84.990),
    _t("conv_aa_large",     "e230_r384_in12k_ft_in1k", 1000, 384, 0.95,  480,  1.0,  IN,  84.314, 84.772),
    _t("conv_aa_large",     "e600_r384_in1k",          1000, 384, 0.95,  480,  1.0,  IN,  83.264, 83.826),
    _t("conv_aa_large",     "e230_r384_in12k",         K12,  384, 0.95,  448,  1.0,  IN),
    _t("hybrid_medium_075", "untrained",               1000, 224, 0.95,  None, None, IN,  released=False),
    _t("hybrid_large_075",  "untrained",               1000, 256, 0.95,  None, None, IN,  released=False),
)
# fmt: on
PRETRAINED: dict[str, PretrainedTag] = {t.name: t for t in TAGS}


def list_pretrained(pattern: str = "*", include_untrained: bool = False) -> list[str]:
    """``variant.tag`` names of the released weights matching a shell-style ``pattern``, in registry order.

    ``include_untrained=True`` adds the config-only ``.untrained`` entries (no weights to download).
    """
    return [t.name for t in TAGS if (t.released or include_untrained) and fnmatch.fnmatch(t.name, pattern)]


def default_tag(arch: str) -> PretrainedTag:
    """The first listed tag of a variant (timm's default), ``.untrained`` if it has no released weights."""
    for t in TAGS:
        if t.arch == arch:
            return t
    raise UserError(f"no pretrained config for {arch!r}")


def default_cfg(spec: ModelSpec) -> dict:
    """The ``pretrained_cfg`` of a model without a tag: its variant's default tag (timm's choice for an
    un-pretrained model) or, for a custom spec (``mnv4 search``) or a variant with no tag (TF's ConvMediumSeg), the
    MNv4 protocol at the spec's resolution."""
    if MODEL_SPECS.get(spec.name) == spec and any(t.arch == spec.name for t in TAGS):
        return default_tag(spec.name).to_cfg()
    protocol = PretrainedTag(spec.name, "", 1000, spec.resolution, 0.95, None, None, *IN, released=False)
    return {**protocol.to_cfg(), "tag": None, "license": None}


def cfg_for_features(cfg: dict) -> dict:
    """The ``pretrained_cfg`` of a ``features_only`` model: without the classifier fields (timm's
    ``pretrained_cfg_for_features``)."""
    return {k: v for k, v in cfg.items() if k not in ("num_classes", "classifier", "global_pool")}


def split_name(name_or_tag: str) -> tuple[str, PretrainedTag | None]:
    """``'variant'`` -> (variant, None); ``'variant.tag'`` -> (variant, its PretrainedTag); unknown -> UserError."""
    if not isinstance(name_or_tag, str):
        raise UserError(f"model name must be a string, got {name_or_tag!r}")
    arch, _, tag = name_or_tag.partition(".")
    get_spec(arch)  # unknown variant: names the closest variants
    if not tag:
        return arch, None
    if name_or_tag in PRETRAINED:
        return arch, PRETRAINED[name_or_tag]
    own = [t.name for t in TAGS if t.arch == arch]
    close = closest_names(name_or_tag, own) or own
    raise UserError(
        f"unknown pretrained tag {name_or_tag!r}. Tags of {arch}: {', '.join(close)}. "
        f"See mnv4.list_pretrained() for all {len(list_pretrained())} released tags."
    )


# ---------------------------------------------------------------------------------------------------- download
def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def hub_cache_dir() -> str | None:
    """The hub cache the environment asks for NOW (``HF_HUB_CACHE``, else ``HF_HOME``/hub), None = hub default.

    huggingface_hub reads these variables once, at import; reading them per call makes a later change count too.
    """
    if os.environ.get("HF_HUB_CACHE"):
        return os.path.expanduser(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return os.path.join(os.path.expanduser(os.environ["HF_HOME"]), "hub")
    return None


def hub_unreachable(tag: PretrainedTag) -> str | None:
    """Why the hub cannot be reached right now (the error of one request), or None when it answers.

    huggingface_hub retries a download that cannot connect, with back-off (~30 s with huggingface_hub 2.x), before
    it gives up; one metadata request for the file, without retries, tells at once whether there is a network to
    retry on. It goes where the download would go (``HF_ENDPOINT``, proxies, certificates), which a bare socket or
    DNS probe would not see. Any HTTP answer, even 401 or 404, means the hub is there: the download then reports
    what it said. A request that times out (``HF_HUB_ETAG_TIMEOUT``, default 10 s) counts as unreachable.
    """
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import HfHubHTTPError

    try:
        get_hf_file_metadata(hf_hub_url(tag.hf_hub_id, HUB_FILENAME))
    except HfHubHTTPError:
        return None
    except Exception as err:  # noqa: BLE001 -- requests (huggingface_hub < 1) and httpx (>= 1) raise different types
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else ""
        return f"{type(err).__name__}: {first_line}" if first_line else type(err).__name__
    return None


def download(tag: PretrainedTag) -> Path:
    """Path of ``model.safetensors`` for a released tag: from the hub cache, downloading it when allowed.

    Honours ``HF_HUB_OFFLINE=1`` (cache only), ``HF_HUB_CACHE`` / ``HF_HOME``. Without ``HF_HUB_OFFLINE``, one request
    (``hub_unreachable``) first checks that the hub answers; when it does not, only the cache is read, at once,
    instead of huggingface_hub's retries. Nothing cached while offline (or no network) raises one FileNotFoundError
    saying how to fetch the file or where to put it.
    """
    if not tag.released:
        raise UserError(
            f"{tag.name} has no released weights (a config-only entry). Released tags of {tag.arch}: "
            f"{', '.join(list_pretrained(tag.arch + '.*')) or 'none'}; or pass pretrained='path/to/weights'"
        )
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    offline = _env_true("HF_HUB_OFFLINE") or constants.HF_HUB_OFFLINE
    unreachable = None if offline else hub_unreachable(tag)
    cache_dir = hub_cache_dir()
    try:
        return Path(hf_hub_download(tag.hf_hub_id, HUB_FILENAME, cache_dir=cache_dir,
                                    local_files_only=offline or unreachable is not None))
    except LocalEntryNotFoundError as err:
        where = cache_dir or constants.HF_HUB_CACHE
        reason = unreachable or type(err).__name__
        why = "HF_HUB_OFFLINE is set" if offline else f"the hub could not be reached ({reason})"
        raise FileNotFoundError(
            f"weights for {tag.name} are not in the hub cache ({where}) and {why}. Fetch them on a machine with "
            f"network access: `hf download {tag.hf_hub_id} {HUB_FILENAME}` (huggingface_hub < 0.34: "
            f"`huggingface-cli download ...`; or python -c \"import huggingface_hub as h; "
            f"h.hf_hub_download('{tag.hf_hub_id}', '{HUB_FILENAME}')\") and copy the cache "
            f"over, or download https://huggingface.co/{tag.hf_hub_id}/resolve/main/{HUB_FILENAME} anywhere and "
            f"pass pretrained='path/to/{HUB_FILENAME}' (mnv4 predict / eval: --weights PATH)"
        ) from None


# ---------------------------------------------------------------------------------------------------- reading files
def _looks_like_safetensors(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 100_000_000


def read_state_dict(path: str | os.PathLike, use_ema: bool = True) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file, unwrapped to a plain ``{key: tensor}`` state dict on CPU.

    safetensors, or a torch file through ``torch.load(weights_only=True)`` (a file that needs arbitrary unpickling is
    refused). timm ``train.py`` checkpoints: ``state_dict_ema`` (when ``use_ema``, as timm's ``load_checkpoint``) or
    ``state_dict``; ``module.`` prefixes (DDP / EMA wrappers) are removed.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {str(path)!r} does not exist" + (" (it is a folder)" if path.is_dir()
                                                                                   else ""))
    if path.suffix == ".safetensors" or (path.suffix not in TORCH_SUFFIXES and _looks_like_safetensors(path)):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            obj = load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError, RuntimeError) as err:
            raise UserError(
                f"{path}: not a readable safetensors file ({err}); it is probably truncated or corrupt -- "
                f"download it again (delete it first) and check its size"
            ) from None
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise UserError(
                f"refused to load {path}: it holds Python objects beyond tensors, and unpickling them could run "
                f"arbitrary code, so only torch.load(weights_only=True) is used ({first[:200]}). If you trust the "
                f"file, re-save just its tensors: torch.save(state_dict, 'clean.pth') or "
                f"safetensors.torch.save_file(state_dict, 'model.safetensors')"
            ) from None
        except (RuntimeError, EOFError, OSError) as err:
            raise UserError(
                f"{path}: not a readable PyTorch checkpoint ({str(err).splitlines()[0][:200]}); it is probably "
                f"truncated or not a checkpoint at all"
            ) from None
    return _unwrap(obj, path, use_ema)


def _unwrap(obj: object, path: Path, use_ema: bool) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping):
        keys = ("state_dict_ema", "model_ema", "state_dict", "model") if use_ema else ("state_dict", "model")
        for key in keys:
            if isinstance(obj.get(key), Mapping) and obj[key]:
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj:
        raise UserError(f"{path}: no state dict found (expected a mapping of parameter names to tensors)")
    out = {}
    for k, v in obj.items():
        if not isinstance(v, torch.Tensor):
            raise UserError(
                f"{path}: entry {k!r} is a {type(v).__name__}, not a tensor; expected a model state dict or a timm "
                f"train.py checkpoint (with 'state_dict' / 'state_dict_ema')"
            )
        out[k[len("module."):] if k.startswith("module.") else k] = v
    return out


# ---------------------------------------------------------------------------------------------------- matching
@functools.cache
def _variant_shapes(arch: str) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a variant's backbone (no classifier), built on the meta device (no memory, ~0.1 s)."""
    from .model import MobileNetV4

    with torch.device("meta"):
        model = MobileNetV4(get_spec(arch), num_classes=0)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def guess_variant(state_dict: Mapping[str, torch.Tensor]) -> str | None:
    """The registered variant whose backbone keys and shapes this state dict matches best (None: none is close)."""
    from .specs import MODEL_SPECS

    have = {k: tuple(v.shape) for k, v in state_dict.items() if not k.startswith("classifier.")}
    best, best_score = None, 0.0
    for arch in MODEL_SPECS:
        ref = _variant_shapes(arch)
        same = sum(1 for k, s in ref.items() if have.get(k) == s)
        score = same / max(len(ref), len(have))
        if score > best_score:
            best, best_score = arch, score
    return best if best_score >= 0.5 else None


def _describe_mismatch(model: nn.Module, sd: Mapping[str, torch.Tensor], source: str) -> str | None:
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    counter = "num_batches_tracked"  # BN step counters say nothing about the architecture: not listed
    missing = [k for k in own if k not in sd and not k.endswith(counter)]
    unexpected = [k for k in sd if k not in own and not k.endswith(counter)]
    shapes = [f"{k} {tuple(sd[k].shape)} vs {own[k]}" for k in own if k in sd and tuple(sd[k].shape) != own[k]]
    if not (missing or unexpected or shapes):
        return None
    parts = []
    for label, keys in (("shape mismatch", shapes), ("missing", missing), ("unexpected", unexpected)):
        if keys:
            more = f" (+{len(keys) - 3} more)" if len(keys) > 3 else ""
            parts.append(f"{len(keys)} {label}: {', '.join(keys[:3])}{more}")
    arch = getattr(getattr(model, "spec", None), "name", type(model).__name__)
    guess = guess_variant(sd)
    if guess == arch:
        hint = f"it does match {arch}'s backbone"
    elif guess:
        hint = f"it looks like a {guess} checkpoint: create_model('{guess}', pretrained=...)"
    else:
        hint = "it does not look like any MobileNetV4 variant in mnv4.list_models()"
    return f"{source} does not fit {arch}: {'; '.join(parts)}. {hint}"


# ---------------------------------------------------------------------------------------------------- loading
def _adapt_stem(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """An RGB stem conv for ``in_chans`` inputs (timm's rule): 1 channel = sum over RGB; more = tiled, rescaled."""
    if in_chans == 1:
        return weight.sum(dim=1, keepdim=True)
    reps = -(-in_chans // weight.shape[1])
    return weight.repeat(1, reps, 1, 1)[:, :in_chans] * (weight.shape[1] / in_chans)


def load_weights(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str) -> nn.Module:
    """Load ``state_dict`` into ``model`` strictly, except for these logged adaptations.

    - classifier size differs from the model's ``num_classes`` (or the model has none): the checkpoint's classifier
      is dropped, the model keeps its freshly initialised one (ONE info message); a file without a classifier
      (saved with num_classes=0) likewise leaves the model's new one;
    - ``features_only`` model: the head (conv_head, norm_head, classifier) of the checkpoint is dropped;
    - ``in_chans`` != 3: the stem conv is adapted (timm's rule, one message).
    Anything else that does not fit raises one UserError naming a few keys and the variant the file looks like.
    """
    sd = dict(state_dict)
    if getattr(model, "features_only", False):
        sd = {k: v for k, v in sd.items() if not k.startswith(HEAD_PREFIXES)}
    else:
        w = sd.get("classifier.weight")
        own = model.state_dict().get("classifier.weight")
        ckpt_classes = w.shape[0] if w is not None and w.ndim == 2 else 0
        model_classes = own.shape[0] if own is not None else 0
        if w is not None and ckpt_classes != model_classes:
            for k in CLASSIFIER_KEYS:
                sd.pop(k, None)
            target = f"a new randomly initialised {model_classes}-class classifier" if model_classes else (
                "no classifier (num_classes=0: the model outputs the 1280-d pre-logits)")
            logger.info(
                "%s has a %d-class classifier; dropped it and kept %s (num_classes=%d). Everything else loaded "
                "strictly.", source, ckpt_classes, target, model_classes,
            )
        elif w is None and model_classes:
            logger.info("%s has no classifier; the model keeps its new randomly initialised %d-class classifier",
                        source, model_classes)
    stem = sd.get("conv_stem.weight")
    in_chans = getattr(model, "in_chans", 3)
    if stem is not None and stem.ndim == 4 and stem.shape[1] == 3 and in_chans != 3:
        sd["conv_stem.weight"] = _adapt_stem(stem, in_chans)
        logger.info("%s: adapted the 3-channel stem conv to in_chans=%d", source, in_chans)

    problem = _describe_mismatch(model, sd, source)
    head_free = not getattr(model, "features_only", False) and "classifier.weight" not in sd
    if problem and head_free:  # the only keys allowed to be absent are the re-initialised classifier's
        own = dict(model.state_dict())
        for k in CLASSIFIER_KEYS:
            if k in own:
                sd[k] = own[k]
        problem = _describe_mismatch(model, sd, source)
    if problem:
        raise UserError(problem)
    own = model.state_dict()
    for k in own:  # files saved without BN step counters: keep the model's
        if k.endswith("num_batches_tracked") and k not in sd:
            sd[k] = own[k]
    sd = {k: v for k, v in sd.items() if k in own}  # only stray BN counters can be left over here
    model.load_state_dict(sd, strict=True)
    return model
