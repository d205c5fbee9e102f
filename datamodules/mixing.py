"""Mixing batch sampler: each batch holds a fixed share rho of subset images, the rest from a second pool.

Epoch length (docs/design.md §4, ask_the_expert.method.stages.batches_per_epoch): an epoch shows every subset image
about once, and every DDP rank runs the same number of steps.

DDP: the epoch's global draw is generated identically on every rank from ``(seed, epoch)`` alone, then batch ``i``
goes to rank ``i % num_replicas``; the ranks together cover the draw exactly once. Pools are cycled through
independent random permutations (one stream per pool), so a longer draw extends a shorter one: the draw never
depends on ``num_replicas`` beyond its length.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

from ask_the_expert.method.stages import batches_per_epoch, subset_per_batch
from ask_the_expert.utils.errors import SuiteError


def _cycle(rng: np.random.Generator, pool: np.ndarray, n: int) -> np.ndarray:
    """``n`` draws from ``pool``: consecutive random permutations, so no repeat before the pool is exhausted."""
    if n == 0:
        return np.empty(0, dtype=np.int64)
    rounds = math.ceil(n / len(pool))
    return np.concatenate([rng.permutation(pool) for _ in range(rounds)])[:n]


class MixingBatchSampler(Sampler[list[int]]):
    """Yields batches of dataset positions: ``round(rho * batch_size)`` from ``subset``, the rest from ``rest``.

    Args:
        subset, rest: dataset positions of the subset images and of the pool the rest of each batch comes from.
        batch_size: per-rank batch size.
        rho: share of each batch drawn from ``subset``, in [0, 1].
        seed, epoch: the draw is a function of these two alone (call ``set_epoch`` or build one per epoch).
        num_replicas, rank: DDP world size and this process's rank.
    """

    def __init__(
        self,
        subset: Sequence[int],
        rest: Sequence[int],
        batch_size: int,
        rho: float,
        seed: int = 0,
        epoch: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        if not 0.0 <= rho <= 1.0:
            raise SuiteError(f"The subset share rho must lie in [0, 1], got {rho!r}; fix the stage's rho.")
        if batch_size < 1 or num_replicas < 1 or not 0 <= rank < num_replicas:
            raise SuiteError(
                f"Bad sampler settings batch_size={batch_size}, num_replicas={num_replicas}, rank={rank}: "
                "use batch_size >= 1 and 0 <= rank < num_replicas."
            )
        self.subset = np.asarray(subset, dtype=np.int64)
        self.rest = np.asarray(rest, dtype=np.int64)
        self.batch_size = batch_size
        self.rho = rho
        self.n_subset = subset_per_batch(batch_size, rho)
        self.n_rest = batch_size - self.n_subset
        if len(self.subset) == 0:
            raise SuiteError("The expert's subset has no training images; check the subset and the data split.")
        if self.n_rest > 0 and len(self.rest) == 0:
            raise SuiteError(
                f"The stage takes {self.n_rest} of each {batch_size} images from a pool that is empty (for "
                "routed_in: the generalist routes no outside image to this expert). Use rest: other_classes, a "
                "larger routing_k, or rho: 1.0."
            )
        self.seed = seed
        self.epoch = epoch
        self.num_replicas = num_replicas
        self.rank = rank

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return batches_per_epoch(len(self.subset), self.batch_size, self.rho, self.num_replicas)

    def global_draw(self) -> np.ndarray:
        """All ranks' batches of this epoch, shape ``(len(self) * num_replicas, batch_size)``."""
        n = len(self) * self.num_replicas
        # One generator per pool: the subset stream does not shift with the rest pool's draw length.
        sub = _cycle(np.random.default_rng([self.seed, self.epoch, 0]), self.subset, n * self.n_subset)
        rest = _cycle(np.random.default_rng([self.seed, self.epoch, 1]), self.rest, n * self.n_rest)
        return np.concatenate([sub.reshape(n, self.n_subset), rest.reshape(n, self.n_rest)], axis=1)

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.global_draw()[self.rank :: self.num_replicas]:
            yield batch.tolist()
