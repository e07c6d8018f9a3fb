"""The resumable, rank-aware batch sampler: (index, per-sample seed) pairs, resumable at any batch."""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from .base import mix_seed

__all__ = ["ResumableBatchSampler"]


class ResumableBatchSampler:
    """Yields this rank's micro-batches of ``(index, sample_seed)``; resumable at any batch.

    Each epoch shuffles all indices with a generator seeded by (seed, epoch). Global micro-batch k is
    ``perm[k * B * W : (k + 1) * B * W]`` (B per rank, W ranks) and rank r takes the r-th slice of B, so the
    union over ranks does not depend on W. The sample at position p of epoch e gets the seed
    ``mix_seed(seed, e, p)``. Incomplete global batches are dropped when ``drop_last``; otherwise the
    last one is split as evenly as possible (evaluation).
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = True,
    ) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if drop_last and num_samples < batch_size * world_size:
            raise ValueError(
                f"the dataset has {num_samples} samples, fewer than one global batch "
                f"({batch_size} x {world_size} ranks); lower --batch-size"
            )
        self.num_samples, self.batch_size, self.rank, self.world_size = num_samples, batch_size, rank, world_size
        self.seed, self.shuffle, self.drop_last = seed, shuffle, drop_last
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch and skip its first ``start_batch`` micro-batches (for resuming)."""
        self.epoch, self.start_batch = epoch, start_batch

    @property
    def num_batches(self) -> int:
        """Micro-batches per epoch (all of them, whatever ``start_batch``)."""
        glob = self.batch_size * self.world_size
        return self.num_samples // glob if self.drop_last else math.ceil(self.num_samples / glob)

    def __len__(self) -> int:
        return self.num_batches - self.start_batch

    def positions(self, k: int) -> range:
        """The epoch positions of this rank's share of global micro-batch ``k``."""
        glob = self.batch_size * self.world_size
        chunk = range(k * glob, min((k + 1) * glob, self.num_samples))
        per = math.ceil(len(chunk) / self.world_size)
        return chunk[self.rank * per : (self.rank + 1) * per]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        if self.shuffle:
            g = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch))
            perm = torch.randperm(self.num_samples, generator=g).tolist()
        else:
            perm = list(range(self.num_samples))
        for k in range(self.start_batch, self.num_batches):
            mine = self.positions(k)
            if not mine:  # a short last batch (drop_last=False) need not reach every rank
                continue
            yield [(perm[p], mix_seed(self.seed, self.epoch, p)) for p in mine]
