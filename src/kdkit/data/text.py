"""Sentence classification data: TSV files (SST-2), tokenised with a model's tokenizer, in length-bucketed batches.

`read_tsv` reads `label<TAB>sentence` lines under a header (the column order is an option); a malformed line is a
DataError naming the file and line. `TextDataset` holds the sentences, their labels and, once `tokenize`d, their
token ids, right-padded in one (N, L) array with their lengths; `subset` keeps them aligned, so the splits of
`kdkit.data.splits` work on it as on images. `BucketLoader` serves batches of similar lengths (sorted by length
inside shuffled chunks, seeded by (seed, epoch)), padded to the longest sentence of each batch, with the
attention mask: the engine's `input_ids`, `attention_mask`, `labels`, `index` batch.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from kdkit.batches import INDEX, LABELS, stable_seed
from kdkit.data.tokens import ATTENTION_MASK, INPUT_IDS
from kdkit.errors import DataError

SST2_CLASSES = ["negative", "positive"]


def read_tsv(
    path: str | Path, *, label_column: int = 0, text_column: int = 1, header: bool = True
) -> tuple[list[str], np.ndarray]:
    """Return (sentences, integer labels) of a tab-separated file; the first line is a header when `header`.

    Every line must have as many fields as the first, an integer label >= 0 and a non-empty sentence.
    """
    path = Path(path)
    if label_column == text_column:
        raise DataError(f"{path}: the label and the text column are both column {label_column}")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc})") from None
    start = 1 if header else 0
    width = max(label_column, text_column) + 1
    if header and lines and len(lines[0].split("\t")) > width:
        width = len(lines[0].split("\t"))
    sentences: list[str] = []
    labels: list[int] = []
    for lineno, line in enumerate(lines[start:], start=start + 1):
        if not line.strip():
            continue  # a blank line (a trailing newline) holds no sample
        fields = line.split("\t")
        if len(fields) != width:
            what = "no tab" if len(fields) == 1 else f"{len(fields)} tab-separated fields"
            raise DataError(
                f"{path}:{lineno}: expected {width} tab-separated fields, found {what}: {line[:80]!r}"
            )
        label, text = fields[label_column].strip(), fields[text_column].strip()
        if not (label.isdigit() and label.isascii()):
            raise DataError(f"{path}:{lineno}: the label {label!r} is not a non-negative integer")
        if not text:
            raise DataError(f"{path}:{lineno}: the sentence is empty")
        labels.append(int(label))
        sentences.append(text)
    if not sentences:
        raise DataError(f"{path}: holds no sentences")
    return sentences, np.asarray(labels, dtype=np.int64)


@dataclass
class TextDataset:
    """Sentences with integer labels (label ``i`` is ``classes[i]``; -1 for an unlabeled sentence).

    After `tokenize`, ``input_ids`` (N, L) int32 holds each sentence's token ids right-padded with ``pad_id``
    (int32 halves the memory of a large augmented set; batches are served as int64),
    and ``lengths`` (N,) their counts.
    """

    sentences: list[str]
    labels: np.ndarray
    classes: list[str]
    name: str
    input_ids: np.ndarray | None = None
    lengths: np.ndarray | None = None
    pad_id: int = 0

    def __post_init__(self) -> None:
        self.labels = np.ascontiguousarray(np.asarray(self.labels, dtype=np.int64))
        if self.labels.shape != (len(self.sentences),):
            raise DataError(
                f"dataset {self.name!r}: {len(self.sentences)} sentences but labels of shape {self.labels.shape}"
            )
        self.classes = [str(c) for c in self.classes]

    def __len__(self) -> int:
        """Return the number of sentences."""
        return len(self.sentences)

    @property
    def num_classes(self) -> int:
        """Return the number of classes."""
        return len(self.classes)

    @property
    def tokenized(self) -> bool:
        """Return True when the token ids are there."""
        return self.input_ids is not None and self.lengths is not None

    def subset(self, indices: np.ndarray, name: str | None = None) -> TextDataset:
        """Return the sentences at ``indices`` (integers or a boolean mask), token ids and labels aligned."""
        idx = np.asarray(indices)
        if idx.dtype == np.bool_:
            idx = np.flatnonzero(idx)
        idx = idx.astype(np.int64)
        return TextDataset(
            sentences=[self.sentences[i] for i in idx],
            labels=self.labels[idx],
            classes=list(self.classes),
            name=name if name is not None else f"{self.name}[subset]",
            input_ids=self.input_ids[idx] if self.input_ids is not None else None,
            lengths=self.lengths[idx] if self.lengths is not None else None,
            pad_id=self.pad_id,
        )


def load_tsv_dataset(
    path: str | Path,
    classes: Sequence[str] | None = None,
    *,
    name: str | None = None,
    label_column: int = 0,
    text_column: int = 1,
    header: bool = True,
) -> TextDataset:
    """Return a TSV file as a TextDataset; without `classes` they are "0" .. str(max label)."""
    sentences, labels = read_tsv(path, label_column=label_column, text_column=text_column, header=header)
    names = list(classes) if classes is not None else [str(i) for i in range(int(labels.max()) + 1)]
    if int(labels.max()) >= len(names):
        bad = int(np.flatnonzero(labels >= len(names))[0])
        raise DataError(
            f"{path}: label {int(labels[bad])} (sentence {bad + 1}) is out of range for the {len(names)} "
            f"classes {names}"
        )
    return TextDataset(sentences, labels, names, name or Path(path).stem)


def tokenize(ds: TextDataset, tokenizer: Any, max_length: int, chunk: int = 8192) -> TextDataset:
    """Return the dataset with its token ids (truncated to max_length), from a fast tokenizer in batched calls.

    Sentences go to the tokenizer `chunk` at a time, so that a million augmented sentences never hold a million
    encodings in memory at once.
    """
    if max_length < 2:
        raise DataError(f"max_length must be >= 2 (room for the special tokens), got {max_length}")
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        raise DataError(f"the tokenizer of {ds.name!r} has no padding token")
    n = len(ds)
    ids = np.full((n, max_length), pad_id, dtype=np.int32)
    lengths = np.zeros(n, dtype=np.int64)
    for start in range(0, n, chunk):
        enc = tokenizer(
            list(ds.sentences[start : start + chunk]),
            truncation=True,
            max_length=max_length,
            padding=False,
            return_attention_mask=False,
            return_token_type_ids=False,
        )["input_ids"]
        for i, e in enumerate(enc, start=start):
            ids[i, : len(e)] = e
            lengths[i] = len(e)
    width = max(int(lengths.max(initial=1)), 1)
    out = ds.subset(np.arange(n), name=ds.name)
    out.input_ids = np.ascontiguousarray(ids[:, :width])
    out.lengths, out.pad_id = lengths, int(pad_id)
    return out


def bucket_batches(lengths: Tensor, batch_size: int, chunk: int, generator: torch.Generator) -> list[Tensor]:
    """Return batches of indices of similar lengths: shuffled, sorted by length inside chunks, batch order shuffled.

    Chunks hold `chunk` batches, so every batch but the last is full and there are ceil(N / batch_size).
    """
    order = torch.randperm(len(lengths), generator=generator)
    span = batch_size * chunk
    batches: list[Tensor] = []
    for start in range(0, len(order), span):
        part = order[start : start + span]
        part = part[torch.argsort(lengths[part], stable=True)]
        batches += list(part.split(batch_size))
    # The short last batch stays last: every batch before it is full, as in an unbucketed loader.
    head = batches[:-1] if len(batches[-1]) < batch_size else batches
    perm = torch.randperm(len(head), generator=generator).tolist()
    return [head[i] for i in perm] + batches[len(head) :]


class BucketLoader:
    """Length-bucketed mini-batches of tokenised sentences (the engine's loader protocol).

    Shuffled loaders draw the order from (seed, epoch), so a resumed phase sees the same batches; unshuffled
    loaders keep the dataset's order (for predictions), or with `by_length` serve it sorted by length (for
    evaluation, where order does not matter and padding does). Each batch is padded to its longest sentence. ``batch_size`` is the global batch: each of ``world_size`` ranks takes every world_size-th row.
    """

    def __init__(
        self,
        ds: TextDataset,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        chunk: int = 50,
        by_length: bool = False,
        extras: dict[str, Tensor] | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if not ds.tokenized:
            raise DataError(f"dataset {ds.name!r} is not tokenised: call kdkit.data.text.tokenize first")
        if batch_size < 1 or chunk < 1:
            raise ValueError(f"batch_size and chunk must be >= 1, got {batch_size} and {chunk}")
        assert ds.input_ids is not None and ds.lengths is not None
        self.input_ids = torch.from_numpy(ds.input_ids)
        self.lengths = torch.from_numpy(ds.lengths)
        self.labels = torch.from_numpy(ds.labels)
        self.extras = {k: torch.as_tensor(v) for k, v in (extras or {}).items()}
        for k, v in self.extras.items():
            if len(v) != len(ds):
                raise ValueError(f"extra {k!r} has {len(v)} rows for {len(ds)} sentences")
        self.batch_size, self.shuffle, self.seed, self.chunk = batch_size, shuffle, seed, chunk
        self.by_length = by_length and not shuffle
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self.start_batch = 0

    def __len__(self) -> int:
        """Return the number of batches per epoch."""
        return math.ceil(len(self.labels) / self.batch_size)

    @property
    def ordered(self) -> bool:
        """Return True when batches show every sentence once, in order (for predictions)."""
        return not self.shuffle and not self.by_length

    def batch_keys(self) -> frozenset[str]:
        """Return the names of the tensors every batch holds."""
        return frozenset((INPUT_IDS, ATTENTION_MASK, LABELS, INDEX, *self.extras))

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch (it seeds the order) and the batch to start from (for mid-epoch resume)."""
        self.epoch, self.start_batch = epoch, start_batch

    def shard(self, rank: int, world_size: int) -> BucketLoader:
        """Return this loader restricted to one rank's rows of every batch (itself for one process)."""
        if world_size <= 1:
            return self
        out = copy.copy(self)
        out.rank, out.world_size = rank, world_size
        return out

    def batches(self) -> list[Tensor]:
        """Return this epoch's batches of global indices."""
        if not self.shuffle:
            order = (
                torch.argsort(self.lengths, stable=True) if self.by_length else torch.arange(len(self.labels))
            )
            return list(order.split(self.batch_size))
        g = torch.Generator().manual_seed(stable_seed(self.seed, self.epoch))
        return bucket_batches(self.lengths, self.batch_size, self.chunk, g)

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        batches = self.batches()
        for b in range(self.start_batch, len(batches)):
            idx = batches[b][self.rank :: self.world_size]
            lengths = self.lengths.index_select(0, idx)
            width = max(int(lengths.max()), 1) if len(idx) else 1
            yield {
                INPUT_IDS: self.input_ids.index_select(0, idx)[:, :width].long(),
                ATTENTION_MASK: (torch.arange(width)[None] < lengths[:, None]).long(),
                LABELS: self.labels.index_select(0, idx),
                INDEX: idx,
                **{k: v.index_select(0, idx) for k, v in self.extras.items()},
            }
        self.start_batch = 0


def concat_text(first: TextDataset, second: TextDataset, name: str) -> TextDataset:
    """Return the sentences of both tokenised datasets (same classes and padding id), `first` first."""
    if first.classes != second.classes or first.pad_id != second.pad_id:
        raise DataError(f"cannot join {first.name!r} and {second.name!r}: other classes or padding id")
    if not (first.tokenized and second.tokenized):
        raise DataError(f"cannot join {first.name!r} and {second.name!r}: both must be tokenised")
    assert first.input_ids is not None and second.input_ids is not None
    assert first.lengths is not None and second.lengths is not None
    width = max(first.input_ids.shape[1], second.input_ids.shape[1])
    ids = np.full((len(first) + len(second), width), first.pad_id, dtype=np.int32)
    ids[: len(first), : first.input_ids.shape[1]] = first.input_ids
    ids[len(first) :, : second.input_ids.shape[1]] = second.input_ids
    return TextDataset(
        first.sentences + second.sentences,
        np.concatenate([first.labels, second.labels]),
        list(first.classes),
        name,
        input_ids=ids,
        lengths=np.concatenate([first.lengths, second.lengths]),
        pad_id=first.pad_id,
    )
