"""The deterministic data order: one global stream of samples, shared out to the processes.

Sample ``k`` of a run (counting from 0 over all processes and epochs) is
clip ``perm(epoch)[k mod N]`` with augmentation seed ``seed(k)``, where
``epoch = k // N`` and both the permutation and the seed derive only from
(run seed, epoch, k). Iteration ``i`` consumes samples ``i*G .. i*G+G-1`` for
a global batch of ``G``; process ``r`` of ``W`` takes the ``r``-th slice of
``G/W`` of them. So the stream does not depend on the number of processes
(2 processes x batch 1 see what 1 process x batch 2 sees), and the loader's
position is a single integer: resuming restarts the stream there exactly.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


class DataOrder:
    """Maps a global sample position to a ``(clip index, augmentation seed)`` key."""

    def __init__(self, size: int, seed: int) -> None:
        if size < 1:
            raise ValueError(f"expected a data set of at least one clip, got {size}")
        self.size = size
        self.seed = seed
        self._epoch = -1
        self._perm = np.empty(0, dtype=np.int64)

    def permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            rng = np.random.default_rng([self.seed, epoch, 0x5EED])
            self._perm = rng.permutation(self.size)
            self._epoch = epoch
        return self._perm

    def key(self, position: int) -> tuple[int, int]:
        epoch, offset = divmod(position, self.size)
        index = int(self.permutation(epoch)[offset])
        seed = int(np.random.SeedSequence([self.seed, position, 0xA06]).generate_state(1)[0])
        return index, seed


class RankBatches:
    """Batch sampler of one process: lists of keys for iterations ``start .. stop-1``.

    ``first_sample`` is the global stream position at iteration ``start``
    (``start * global_batch`` unless the batch size changed on the way).
    """

    def __init__(
        self,
        order: DataOrder,
        *,
        global_batch: int,
        rank: int,
        world_size: int,
        start: int,
        stop: int,
        first_sample: int,
    ) -> None:
        if global_batch % world_size:
            raise ValueError(
                f"batch size {global_batch} is not divisible by the {world_size} processes"
            )
        self.order = order
        self.global_batch = global_batch
        self.local_batch = global_batch // world_size
        self.rank = rank
        self.start, self.stop = start, stop
        self.first_sample = first_sample

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def position(self, iteration: int) -> int:
        """Global stream position of the first sample of ``iteration`` (all processes)."""
        return self.first_sample + (iteration - self.start) * self.global_batch

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for it in range(self.start, self.stop):
            base = self.position(it) + self.rank * self.local_batch
            yield [self.order.key(base + j) for j in range(self.local_batch)]
