"""The shape of a checkpoint, without its numbers: which keys it has, the type of every value, the dtype and shape of
every tensor, the structure of the optimiser state. Two checkpoints with the same schema are read by the same code.

``tests/data/checkpoint_schemas.json`` holds the schemas of the checkpoints that ``mnv4 train``, ``mnv4 detect
train`` and ``mnv4 search`` wrote before the run machinery moved into ``mnv4.engine`` (recorded with the code of
commit 7884d19 by ``python tests/checkpoint_schema.py record``); ``tests/test_engine_checkpoints.py`` checks that
today's checkpoints still have them, or says what differs and how the old form is read.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

SCHEMAS = Path(__file__).parent / "data" / "checkpoint_schemas.json"
# values whose content is the run's own (a model's tensors, the config's values): only their keys/types are compared
OPAQUE_TENSOR_DICTS = ("model", "ema", "supernet")


def schema(value, path: str = ""):
    """A JSON-able description of ``value``'s structure (see the module docstring)."""
    if isinstance(value, torch.Tensor):
        return {"tensor": str(value.dtype).removeprefix("torch."), "shape": list(value.shape)}
    if isinstance(value, dict):
        if path in OPAQUE_TENSOR_DICTS:  # the model's state: its key set is the architecture, not the format
            return {"state_dict": len(value)}
        if path.endswith("optimizer") and "param_groups" in value:
            groups = [{"keys": sorted(g), "params": len(g["params"])} for g in value["param_groups"]]
            entries = sorted({k for s in value["state"].values() for k in s})
            return {"optimizer": {"param_groups": groups, "state_entries": entries, "states": len(value["state"])}}
        return {"dict": {str(k): schema(v, f"{path}.{k}" if path else str(k)) for k, v in sorted(value.items())}}
    if isinstance(value, (list, tuple)):
        kinds = sorted({type(v).__name__ for v in value})
        return {"list": kinds}
    return type(value).__name__


def train_run(work: Path, **kw):
    """A small classification run on the digits (Conv-S at 32 px, EMA on, a checkpoint every step)."""
    from digits import copy_subset, small_config, write_digits_imagefolder

    from mnv4.train import train

    full = write_digits_imagefolder(work / "digits32", size=32)
    data = copy_subset(full, work / "digits_small", {"train": 10, "val": 4})
    return train(small_config(data, work / kw.pop("out", "train"), **{"ema_decay": 0.9, "max_steps": 3,
                                                                       "save_every_steps": 1, **kw}))


def detect_config(work: Path, **kw):
    """A small RetinaNet run on glyphs (64 px, EMA, validation every epoch)."""
    from coco_digits import write_coco_digits

    from mnv4.detection import load_detect_config

    annotations, images = write_coco_digits(work / "coco", 8, "train", digits=(0, 1, 7), size_range=(128, 160),
                                            glyph_range=(24, 48))
    values = dict(arch="retinanet", backbone="mobilenetv4_conv_small", train_annotations=str(annotations),
                  train_images=str(images), val_annotations=str(annotations), val_images=str(images),
                  out=str(work / "detect"), image_size=64, fpn_channels=16, epochs=1, global_batch=4, lr=2e-3,
                  ema_decay=0.9, workers=0, threads=1, deterministic=True, progress=False, tensorboard=False,
                  log_every=1)
    return load_detect_config(**{**values, **kw})


def search_config(work: Path, **kw):
    """A two-stage search of the tiny space on the digits, 3 steps per stage."""
    from digits import write_digits_imagefolder

    from mnv4.nas import SearchConfig

    data = write_digits_imagefolder(work / "digits32", size=32)
    values = dict(space="tiny", data=str(data), out=str(work / "search"), target=2.5e7, steps=3, global_batch=16,
                  crop_scale_min=0.85, crop_pct=1.0, hflip=False, holdout_fraction=0.2, rl_batch_multiplier=2,
                  rl_lr=0.05, beta=-0.5, workers=0, threads=1, progress=False, plot=False, save_every_steps=1)
    return SearchConfig(**{**values, **kw})


def record_all(work: Path) -> dict:
    """Write one small run of each kind with the code on sys.path and return their checkpoints' schemas."""
    from mnv4.detection import train_detector
    from mnv4.engine.checkpoint import list_checkpoints
    from mnv4.nas import search

    train_run(work)
    train_detector(detect_config(work))
    search(search_config(work, stop_after=4))
    return {kind: schema(torch.load(list_checkpoints(work / kind)[-1], weights_only=True))
            for kind in ("train", "detect", "search")}


if __name__ == "__main__" and sys.argv[1:] == ["record"]:
    import tempfile

    sys.path.insert(0, str(Path(__file__).parent))

    with tempfile.TemporaryDirectory() as tmp:
        SCHEMAS.write_text(json.dumps(record_all(Path(tmp)), indent=1, sort_keys=True) + "\n")
    print(f"wrote {SCHEMAS}")
