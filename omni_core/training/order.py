"""Which items each process trains on at each micro-step: a pure function of the seed and the step.

Every epoch is a seeded permutation; with bucketing, items of one output size are grouped so each batch stacks
whole latents of one shape. Because the plan depends on nothing but (seed, micro-step), a resumed run continues
the data order exactly, and any split over processes sees the same global batches.
"""

from __future__ import annotations

from typing import Hashable, Sequence

import torch


class BatchPlan:
    """Global micro-batches of `global_batch` item indices, epoch after epoch; process p takes its slice."""

    def __init__(self, sizes: Sequence[Hashable], global_batch: int, seed: int, bucket: bool = True) -> None:
        self.sizes, self.global_batch, self.seed, self.bucket = list(sizes), global_batch, seed, bucket
        self._epochs: dict[int, list[list[int]]] = {}  # epoch 0 and the current one

    def _epoch(self, epoch: int) -> list[list[int]]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(len(self.sizes), generator=generator).tolist()
        buckets: dict[Hashable, list[int]] = {}
        for index in order:
            buckets.setdefault(self.sizes[index] if self.bucket else None, []).append(index)
        batches = []
        for members in buckets.values():
            for start in range(0, len(members), self.global_batch):
                batch = members[start : start + self.global_batch]
                while len(batch) < self.global_batch:  # a short last batch is filled from the bucket's start
                    batch = batch + members[: self.global_batch - len(batch)]
                batches.append(batch)
        shuffle = torch.randperm(len(batches), generator=generator).tolist()
        return [batches[i] for i in shuffle]

    def global_micro_batch(self, micro_step: int) -> list[int]:
        """The item indices of micro-step `micro_step` (0-based) over every process."""
        # every epoch has the same number of batches (bucket sizes do not depend on the permutation)
        per_epoch = len(self._cached(0))
        return self._cached(micro_step // per_epoch)[micro_step % per_epoch]

    def _cached(self, epoch: int) -> list[list[int]]:
        if epoch not in self._epochs:
            self._epochs = {epoch: self._epoch(epoch)} | ({0: self._epochs[0]} if 0 in self._epochs else {})
        return self._epochs[epoch]

    def local_micro_batch(self, micro_step: int, process: int, processes: int) -> list[int]:
        """This process's share of the micro-step: positions process*b .. (process+1)*b of the global batch."""
        batch = self.global_micro_batch(micro_step)
        per_process = self.global_batch // processes
        return batch[process * per_process : (process + 1) * per_process]
