"""What the engine needs of data: batches as mappings of named tensors, and a loader protocol.

The engine never asks what a batch holds (images, token ids, a mask): a task names the inputs a model
reads, a step provider names the tensors an objective reads, and both look them up by key.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from typing import Protocol, runtime_checkable

from torch import Tensor

# Keys every training batch holds, whatever the task.
LABELS = "labels"
INDEX = "index"


@runtime_checkable
class BatchLoader(Protocol):
    """A re-iterable source of mini-batches (mappings of named tensors) that the engine trains from.

    `set_epoch(epoch, start_batch)` selects the epoch (it seeds any shuffle) and the batch to start from, so a
    resumed phase continues mid-epoch; `shard(rank, world_size)` returns the loader of one rank of a data-
    parallel job; `batch_keys()` names the tensors every batch holds (so a phase can be checked up front).
    """

    def __iter__(self) -> Iterator[Mapping[str, Tensor]]: ...

    def __len__(self) -> int: ...

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None: ...

    def shard(self, rank: int, world_size: int) -> BatchLoader: ...

    def batch_keys(self) -> frozenset[str]: ...


def stable_seed(*parts: int) -> int:
    """Return a stable 63-bit seed for a tuple of ints (a shuffle per (seed, epoch), a draw per batch)."""
    # Derived, not drawn: resuming mid-epoch needs no saved generator state.
    h = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 63) - 1)
