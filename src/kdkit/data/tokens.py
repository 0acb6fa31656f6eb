"""In-memory batched loader for token sequences: ids, attention masks and labels held as tensors.

Each batch is a mapping `input_ids` (N, L), `attention_mask` (N, L), `labels` ((N,) one class per sequence,
or (N, L) one per token, -100 where a token is not scored), `index` (N,) and any per-sample extras. Sequences
are right-padded; with `trim` each batch is cut to its longest sequence, so short batches cost less.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator

import torch
from torch import Tensor

from kdkit.batches import INDEX, LABELS, stable_seed

INPUT_IDS = "input_ids"
ATTENTION_MASK = "attention_mask"


def _as_2d_ints(name: str, t: Tensor) -> Tensor:
    t = torch.as_tensor(t)
    if t.ndim != 2 or t.is_floating_point() or t.is_complex():
        raise ValueError(f"{name} must be an integer (N, L) tensor, got {t.dtype} {tuple(t.shape)}")
    return t


class TokenLoader:
    """Iterate over mini-batches of in-memory token sequences (the engine's loader protocol).

    ``batch_size`` is the global batch: with ``world_size`` ranks each rank gets every world_size-th sample of
    every global batch, so the optimiser steps are the same for 1 and N processes. The shuffle is seeded by
    (seed, epoch), so a phase resumed mid-epoch sees the same order without saved generator state.
    """

    def __init__(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        labels: Tensor,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        trim: bool = True,
        extras: dict[str, Tensor] | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.input_ids = _as_2d_ints("input_ids", input_ids).long()
        self.attention_mask = _as_2d_ints("attention_mask", attention_mask).long()
        self.labels = torch.as_tensor(labels).long()
        n, length = self.input_ids.shape
        if tuple(self.attention_mask.shape) != (n, length):
            raise ValueError(
                f"attention_mask has shape {tuple(self.attention_mask.shape)}, expected {(n, length)} like input_ids"
            )
        if tuple(self.labels.shape) not in ((n,), (n, length)):
            raise ValueError(
                f"labels have shape {tuple(self.labels.shape)}; expected ({n},) (one per sequence) "
                f"or ({n}, {length}) (one per token)"
            )
        if bool(((self.attention_mask != 0) & (self.attention_mask != 1)).any()):
            raise ValueError("attention_mask must hold only 0 (padding) and 1 (token)")
        if trim and bool((self.attention_mask[:, 1:] > self.attention_mask[:, :-1]).any()):
            raise ValueError("trim needs right-padded sequences (the mask never goes from 0 back to 1)")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.extras = {k: torch.as_tensor(v) for k, v in (extras or {}).items()}
        for k, v in self.extras.items():
            if len(v) != n:
                raise ValueError(f"extra {k!r} has {len(v)} rows for {n} sequences")
            if trim and v.ndim >= 2 and v.shape[1] == length:
                raise ValueError(
                    f"extra {k!r} looks per token ({tuple(v.shape)}); trim=False keeps it aligned"
                )
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.trim = trim
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self.start_batch = 0

    def __len__(self) -> int:
        """Return the number of batches per epoch."""
        n = len(self.input_ids)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    @property
    def ordered(self) -> bool:
        """Return True when batches show every sequence once, in order (for predictions)."""
        return not self.shuffle

    def batch_keys(self) -> frozenset[str]:
        """Return the names of the tensors every batch holds."""
        return frozenset((INPUT_IDS, ATTENTION_MASK, LABELS, INDEX, *self.extras))

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch (it seeds the shuffle) and the batch to start from (for mid-epoch resume)."""
        self.epoch = epoch
        self.start_batch = start_batch

    def shard(self, rank: int, world_size: int) -> TokenLoader:
        """Return this loader restricted to one rank's slice of every batch (itself for one process)."""
        if world_size <= 1:
            return self
        out = copy.copy(self)
        out.rank, out.world_size = rank, world_size
        return out

    def order(self) -> Tensor:
        """Return this epoch's global sample order."""
        n = len(self.input_ids)
        if not self.shuffle:
            return torch.arange(n)
        return torch.randperm(n, generator=torch.Generator().manual_seed(stable_seed(self.seed, self.epoch)))

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        order = self.order()
        for b in range(self.start_batch, len(self)):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size][self.rank :: self.world_size]
            ids = self.input_ids.index_select(0, idx)
            mask = self.attention_mask.index_select(0, idx)
            labels = self.labels.index_select(0, idx)
            if self.trim and len(idx):
                width = max(int(mask.sum(dim=1).max()), 1)
                ids, mask = ids[:, :width], mask[:, :width]
                labels = labels[:, :width] if labels.ndim == 2 else labels
            yield {
                INPUT_IDS: ids,
                ATTENTION_MASK: mask,
                LABELS: labels,
                INDEX: idx,
                **{k: v.index_select(0, idx) for k, v in self.extras.items()},
            }
        self.start_batch = 0
