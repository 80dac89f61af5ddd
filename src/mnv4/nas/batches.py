"""The search's data: training batches for the shared weights and held-out batches that score architectures.

Built on the training pipeline (``mnv4.data``): the same ImageFolder reader, transforms and seeded per-sample
augmentation, and ``MicroBatchSampler`` for the order of the training part, so a batch is a function of (seed,
step, rank) and a resumed search sees the same images. A fixed, seeded part of ``train/`` is held out (TuNAS's
"l2l_valid" split): the controller's quality batches come from it, the shared weights never train on it, and
``val/`` stays untouched for judging the stand-alone result. With offline soft labels the crops and their teacher
logits are those ``mnv4 train --precompute-soft-labels`` stored (same seed and augmentation settings, checked).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from ..engine.metrics import BadFileLog
from ..engine.seeds import MicroBatchSampler, mix_seed
from ..errors import UserError
from ..train.data import ImageFolderDataset, collate, train_transform
from ..transforms import DataConfig, eval_transform

HOLDOUT_STREAM, QUALITY_STREAM = 11, 12
CACHE_BYTES = 256 * 2**20


class _Subset(Dataset):
    """``dataset`` restricted to ``indices``, keyed like it by (aug_epoch, position)."""

    def __init__(self, dataset: ImageFolderDataset, indices: list[int]):
        self.dataset, self.indices = dataset, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, key):
        aug_epoch, i = key
        return self.dataset[(aug_epoch, self.indices[i])]


class _QualitySampler:
    """Per step a seeded random batch of held-out positions (the same on a resumed run)."""

    def __init__(self, size: int, batch: int, seed: int, rank: int, start: int, stop: int):
        self.size, self.batch, self.seed, self.rank, self.start, self.stop = size, batch, seed, rank, start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __iter__(self):
        for step in range(self.start, self.stop):
            generator = torch.Generator().manual_seed(mix_seed(self.seed, QUALITY_STREAM, step, self.rank))
            order = torch.randperm(self.size, generator=generator)[: self.batch].tolist()
            yield [(-1, i) for i in order]


class SupernetData:
    def __init__(self, root: str | Path, cfg, image_size: int, world_size: int = 1, rank: int = 0):
        from ..train.distill import SoftLabels

        root = Path(root)
        if not root.is_dir() or not (root / "train").is_dir():
            raise UserError(f"data folder {str(root / 'train')!r} does not exist: --data must hold train/<class>/*")
        self.cfg, self.world_size, self.rank = cfg, world_size, rank
        # the search config carries the training pipeline's augmentation fields (crop_scale_min, hflip, randaug_*,
        # mean, std) under the same names
        self.train_set = ImageFolderDataset(root / "train", train_transform(image_size, cfg), seed=cfg.seed)
        # held-out quality batches: the evaluation protocol (resize to size / crop_pct, centre crop), as mnv4 eval
        protocol = DataConfig(input_size=(3, image_size, image_size), mean=cfg.mean, std=cfg.std,
                              crop_pct=cfg.crop_pct)
        self.eval_set = ImageFolderDataset(root / "train", eval_transform(protocol))
        self.classes = self.train_set.classes
        if len(self.classes) < 2:  # every architecture would score top-1 = 1: the search would follow the cost only
            raise UserError(f"{root / 'train'} has {len(self.classes)} class folder(s): a search needs >= 2 classes "
                            "to tell architectures apart")
        n = len(self.train_set)
        generator = torch.Generator().manual_seed(mix_seed(cfg.seed, HOLDOUT_STREAM))
        order = torch.randperm(n, generator=generator).tolist()
        n_held = max(1, round(cfg.holdout_fraction * n))
        self.held_out, self.train_indices = sorted(order[:n_held]), sorted(order[n_held:])
        if cfg.global_batch % world_size:
            raise UserError(f"global_batch {cfg.global_batch} is not divisible by the {world_size} processes")
        self.batch = cfg.global_batch // world_size
        if self.batch < 2:  # the head's BatchNorm sits after pooling: one image has no batch statistics
            raise UserError(f"global_batch {cfg.global_batch} over {world_size} processes leaves {self.batch} image "
                            "per process; each needs >= 2")
        self.steps_per_epoch = len(self.train_indices) // cfg.global_batch
        if self.steps_per_epoch == 0:
            raise UserError(
                f"global_batch {cfg.global_batch} exceeds the {len(self.train_indices)} training images left after "
                f"holding out {n_held}; lower --global-batch"
            )
        self.quality_batch = min(len(self.held_out), max(2, round(cfg.rl_batch_multiplier * self.batch)))
        self.soft_labels = None
        if cfg.soft_labels:
            try:
                self.soft_labels = SoftLabels(cfg.soft_labels, cfg, image_size, self.train_set)
            except (ValueError, FileNotFoundError) as err:
                raise UserError(str(err)) from None
        self.bad_log = BadFileLog()
        self.image_size = image_size
        self._cache: tuple[torch.Tensor, torch.Tensor] | None = None

    def steps_for(self, epochs: float) -> int:
        return max(1, round(epochs * self.steps_per_epoch))

    def _loader(self, dataset, batch_sampler) -> DataLoader:
        return DataLoader(dataset, batch_sampler=batch_sampler, num_workers=self.cfg.workers, collate_fn=collate)

    def train_batches(self, start: int, stop: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
        """(images, labels, teacher logits or None) of this rank for global steps ``start`` .. ``stop - 1``."""
        subset = _Subset(self.train_set, self.train_indices)
        step = start
        while step < stop:
            epoch, in_epoch = divmod(step, self.steps_per_epoch)
            aug_epoch = epoch % self.soft_labels.replicas if self.soft_labels is not None else epoch
            sampler = MicroBatchSampler(len(subset), self.cfg.global_batch, self.world_size, self.rank, 1,
                                        self.cfg.seed, epoch, in_epoch, aug_epoch)
            batches = iter(self._loader(subset, sampler))
            for _ in range(min(self.steps_per_epoch - in_epoch, stop - step)):
                images, labels, indices, aug_epochs, bad = next(batches)
                self.bad_log(bad)
                teacher = self.soft_labels.lookup(aug_epochs, indices) if self.soft_labels is not None else None
                yield images, labels, teacher
                step += 1

    def held_out_batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The whole held-out part in a fixed order, ``batch_size`` images at a time, through the evaluation
        protocol: what scores a trained supernet's paths (``mnv4.nas.ranking``)."""
        subset = _Subset(self.eval_set, self.held_out)
        for start in range(0, len(subset), batch_size):
            images, labels, _, _, bad = collate([subset[(-1, i)] for i in range(start, min(len(subset),
                                                                                              start + batch_size))])
            self.bad_log(bad)
            if images is not None:
                yield images, labels

    def quality_batches(self, start: int, stop: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Held-out (images, labels) for global steps ``start`` .. ``stop - 1``. A held-out part small enough
        (< ``CACHE_BYTES`` decoded) is decoded once and kept: its transform has no randomness."""
        subset = _Subset(self.eval_set, self.held_out)
        sampler = _QualitySampler(len(subset), self.quality_batch, self.cfg.seed, self.rank, start, stop)
        if self._cache is None and len(subset) * 3 * self.image_size**2 * 4 <= CACHE_BYTES:
            images, labels, _, _, bad = collate([subset[(-1, i)] for i in range(len(subset))])
            self.bad_log(bad)
            self._cache = images, labels
        if self._cache is not None:
            images, labels = self._cache
            for keys in sampler:
                order = torch.tensor([i for _, i in keys])
                yield images[order], labels[order]
            return
        for images, labels, _, _, bad in self._loader(subset, sampler):
            self.bad_log(bad)
            yield images, labels
