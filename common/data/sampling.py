"""Class-aware sampling shared by the tasks: stratified subsets and a DDP-safe class-balanced sampler."""
from __future__ import annotations

from typing import Sequence

import numpy as np
from torch.utils.data import DistributedSampler


def stratified_subset(labels: Sequence[int], fraction: float, seed: int) -> list[int]:
    """Positions of a seeded, class-stratified share of `labels`; a class of two or more gives at least one."""
    labels = np.asarray(labels)
    chosen = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        count = min(len(members) - 1, max(1, round(fraction * len(members)))) if fraction > 0 else 0
        rng = np.random.default_rng([seed, int(c)])
        chosen += members[rng.permutation(len(members))[:count]].tolist()
    return sorted(chosen)


def class_draw(members: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` members in whole shuffled passes, so a sample repeats only where its class is short."""
    passes = -(-count // len(members))
    return np.concatenate([rng.permutation(members) for _ in range(passes)])[:count]


def balanced_draw(labels: np.ndarray, total: int, rng: np.random.Generator) -> np.ndarray:
    """`total` indices with every class present drawn equally often (the remainder to random classes)."""
    classes = np.unique(labels)
    quota = np.full(len(classes), total // len(classes))
    quota[rng.choice(len(classes), total % len(classes), replace=False)] += 1
    picks = [class_draw(np.flatnonzero(labels == c), int(q), rng) for c, q in zip(classes, quota)]
    return rng.permutation(np.concatenate(picks))


class ClassBalancedSampler(DistributedSampler):
    """Class-balanced indices, the same draw on every rank for a given (seed, epoch); rank r takes every
    num_replicas-th. A DistributedSampler, so Lightning's use_distributed_sampler keeps it rather than wrapping it,
    and calls set_epoch on it.

    num_samples: draws per epoch over all ranks (default: the dataset's length), rounded up to fill every rank.
    """

    def __init__(self, labels: Sequence[int], num_replicas: int = 1, rank: int = 0, seed: int = 0,
                 num_samples: int | None = None):
        labels = np.asarray(labels, dtype=np.int64)
        if labels.size == 0:
            raise ValueError("a balanced sampler needs at least one labelled sample")
        super().__init__(labels, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.labels = labels
        self.num_samples = -(-(num_samples or len(labels)) // num_replicas)
        self.total_size = self.num_samples * num_replicas

    def __iter__(self):
        draw = balanced_draw(self.labels, self.total_size, np.random.default_rng([self.seed, self.epoch]))
        return iter(draw[self.rank:: self.num_replicas].tolist())
