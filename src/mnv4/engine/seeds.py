"""Seed streams and the samplers that make every run a function of its seed: data order, per-sample augmentation and
per-step draws each come from a generator seeded by integers, never from a worker's or a process's global state.

So a sample's crop is the same whatever the number of workers or the rank that loads it, the chunks of a step are the
same whether they run on more processes or as more accumulation steps, and a run resumed from a checkpoint continues
exactly where the interrupted one was (docs/train.md, "Exact resume").
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

# Domain tags so the data order, the augmentation and the per-step draws (dropout, stochastic depth, Mixup/CutMix of
# a micro-batch, seeded by the step loop) of the same epoch draw from unrelated streams.
ORDER_STREAM, AUG_STREAM, STEP_STREAM = 1, 2, 3

SampleKey = tuple[int, int]  # (aug_epoch, index); validation uses aug_epoch = -1 (no randomness)


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers (splitmix64 over the parts): stable across processes and Python runs."""
    mask = (1 << 64) - 1
    state = 0x9E3779B97F4A7C15
    for part in parts:
        state = (state ^ (int(part) & mask)) & mask
        state = (state + 0x9E3779B97F4A7C15) & mask
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        state = z ^ (z >> 31)
    return state >> 1


class MicroBatchSampler:
    """Per-rank micro-batches of one epoch, from a seeded permutation of the whole data set.

    Optimiser step ``s`` uses the global batch ``perm[s*B:(s+1)*B]``; that batch is cut into ``world * accum`` equal
    chunks and rank ``r`` runs chunk ``r * accum + a`` at micro-step ``a``. So the chunks — and with per-chunk seeds
    the whole computation — depend only on the global batch and the chunk size, not on how chunks are spread over
    processes and accumulation steps. ``start_step`` resumes mid-epoch without touching the skipped samples.
    Incomplete last batches are dropped (every step has the recipe's global batch).
    """

    def __init__(
        self,
        num_samples: int,
        global_batch: int,
        world_size: int,
        rank: int,
        accum: int,
        seed: int,
        epoch: int,
        start_step: int = 0,
        aug_epoch: int | None = None,
    ):
        if global_batch % (world_size * accum):
            raise ValueError(f"global batch {global_batch} is not divisible by {world_size} ranks x {accum} steps")
        self.num_samples, self.global_batch = num_samples, global_batch
        self.world_size, self.rank, self.accum = world_size, rank, accum
        self.seed, self.epoch, self.start_step = seed, epoch, start_step
        self.aug_epoch = epoch if aug_epoch is None else aug_epoch
        self.steps = num_samples // global_batch
        self.chunk = global_batch // (world_size * accum)

    def __len__(self) -> int:
        return max(self.steps - self.start_step, 0) * self.accum

    def __iter__(self) -> Iterator[list[SampleKey]]:
        generator = torch.Generator().manual_seed(mix_seed(self.seed, ORDER_STREAM, self.epoch))
        perm = torch.randperm(self.num_samples, generator=generator).tolist()
        for step in range(self.start_step, self.steps):
            batch = perm[step * self.global_batch : (step + 1) * self.global_batch]
            for a in range(self.accum):
                c = self.rank * self.accum + a
                yield [(self.aug_epoch, i) for i in batch[c * self.chunk : (c + 1) * self.chunk]]


class ShardSampler:
    """Validation: rank ``r`` evaluates indices ``r, r + world, ...`` in batches (every sample exactly once)."""

    def __init__(self, num_samples: int, batch_size: int, world_size: int = 1, rank: int = 0):
        self.indices = list(range(rank, num_samples, world_size))
        self.batch_size = batch_size

    def __len__(self) -> int:
        return math.ceil(len(self.indices) / self.batch_size)

    def __iter__(self) -> Iterator[list[SampleKey]]:
        for i in range(0, len(self.indices), self.batch_size):
            yield [(-1, j) for j in self.indices[i : i + self.batch_size]]


def micro_batch_loader(dataset, collate_fn, cfg, ctx, plan, state) -> Iterator:
    """The rest of ``state``'s epoch as a DataLoader over ``dataset`` (indexed by ``(epoch, index)``, as
    ``MicroBatchSampler`` yields them): what a task whose dataset does its own seeded augmentation returns from
    ``micro_batches`` (detection, segmentation). ``cfg`` gives ``global_batch``, ``seed`` and ``workers``."""
    sampler = MicroBatchSampler(len(dataset), cfg.global_batch, ctx.world_size, ctx.rank, plan.accum, cfg.seed,
                                state.epoch, state.step_in_epoch)
    return iter(torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=cfg.workers,
                                            collate_fn=collate_fn, pin_memory=ctx.device.type == "cuda"))
