"""Language-model text in runs: `tinyshakespeare` ($KDKIT_DATA/tinyshakespeare/input.txt) and `text:<file>`.

`load_lm_splits(cfg)` reads the file, cuts it by position into train/validation/test (data.lm.split, 90/5/5 by
default), tokenises it with a byte-level BPE trained on the training split (or data.lm.tokenizer) through
`kdkit.data.lm_text`, and returns each split as an `LMDataset` of fixed-length blocks: `input_ids`, their
`attention_mask` and `labels` (the next token of each position, -100 where none). Its `classes` are the
vocabulary's tokens by id, so a language model is a classifier over `len(classes)` classes for the rest of kdkit.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer
from torch import Tensor

from kdkit.config import DataConfig, LMDataConfig
from kdkit.data.lm_text import blocks, prepare_text, tokenizer_hash
from kdkit.data.sources import data_root
from kdkit.errors import DataError
from kdkit.models.hf import PREFIX as HF_PREFIX
from kdkit.models.hf import resolve_hf_path

NAMED_TEXTS = {"tinyshakespeare": Path("tinyshakespeare") / "input.txt"}


@dataclass
class LMDataset:
    """Fixed-length blocks of token ids with their next-token labels (one split of a text)."""

    input_ids: Tensor  # (n, block_size) int64
    attention_mask: Tensor  # (n, block_size) 1 for tokens, 0 for the padding of the last block
    labels: Tensor  # (n, block_size) the next token, -100 where there is none
    classes: list[str]  # the vocabulary's tokens by id
    name: str

    def __len__(self) -> int:
        """Return the number of blocks."""
        return len(self.input_ids)

    @property
    def tokens(self) -> int:
        """Return the number of scored positions (tokens with a next token)."""
        return int((self.labels >= 0).sum())

    def subset(self, indices: np.ndarray | Tensor, name: str | None = None) -> LMDataset:
        """Return the blocks at `indices` (integers or a boolean mask)."""
        idx = torch.as_tensor(np.asarray(indices))
        if idx.dtype == torch.bool:
            idx = idx.nonzero().reshape(-1)
        idx = idx.long()
        return LMDataset(
            self.input_ids[idx],
            self.attention_mask[idx],
            self.labels[idx],
            list(self.classes),
            name if name is not None else f"{self.name}[subset]",
        )


def text_file(cfg: DataConfig) -> Path:
    """Return the text file of a language-model data set: a named text under the data root, or text:PATH."""
    if cfg.dataset in NAMED_TEXTS:
        path = data_root(cfg.root) / NAMED_TEXTS[cfg.dataset]
        hint = f" (set KDKIT_DATA or data.root to the directory holding {NAMED_TEXTS[cfg.dataset].parent}/)"
    else:
        path, hint = Path(cfg.dataset.removeprefix("text:")).expanduser(), ""
    if not path.is_file():
        raise DataError(f"data.dataset {cfg.dataset}: {path} not found{hint}")
    return path


def _vocabulary(tokenizer: Tokenizer) -> list[str]:
    size = tokenizer.get_vocab_size(with_added_tokens=True)
    by_id = {i: t for t, i in tokenizer.get_vocab(with_added_tokens=True).items()}
    return [by_id.get(i, f"<{i}>") for i in range(size)]


def _dataset(ids: Tensor, block_size: int, classes: list[str], name: str, limit: int | None) -> LMDataset:
    if len(ids) < 2:
        return LMDataset(
            torch.zeros(0, block_size, dtype=torch.long),
            torch.zeros(0, block_size, dtype=torch.long),
            torch.zeros(0, block_size, dtype=torch.long),
            classes,
            name,
        )
    inputs, mask, labels = blocks(ids, block_size)
    if limit is not None:
        inputs, mask, labels = inputs[:limit], mask[:limit], labels[:limit]
        name = f"{name}[first {limit} blocks]"
    return LMDataset(inputs, mask, labels, classes, name)


def load_lm_splits(
    cfg: DataConfig, tokenizer: Tokenizer | str | Path | None = None
) -> tuple[LMDataset, LMDataset, LMDataset, Tokenizer, dict[str, Any]]:
    """Return (train, val, test, tokenizer, the record kept with runs and checkpoints) of language-model text.

    `tokenizer` overrides data.lm.tokenizer (kdkit eval passes the checkpoint's own).
    """
    lm = cfg.lm or LMDataConfig()
    path = text_file(cfg)
    given = tokenizer if tokenizer is not None else lm.tokenizer
    if isinstance(given, str) and given.startswith(f"{HF_PREFIX}:"):
        given = resolve_hf_path(given.removeprefix(f"{HF_PREFIX}:"))  # a folder or an installed package
    data = prepare_text(path, tokenizer=given, vocab_size=lm.vocab_size, fractions=tuple(lm.split))
    classes = _vocabulary(data.tokenizer)
    b = lm.block_size
    train = _dataset(data.train, b, classes, f"{cfg.dataset}/train", cfg.train_limit)
    val = _dataset(data.val, b, classes, f"{cfg.dataset}/val", None)
    test = _dataset(data.test, b, classes, f"{cfg.dataset}/test", cfg.test_limit)
    if not len(train):
        raise DataError(f"data.dataset {cfg.dataset}: the training split holds no block")
    record = {
        **lm.model_dump(mode="json"),
        "file": str(path),
        "tokenizer_sha": tokenizer_hash(data.tokenizer),
        "vocab": len(classes),
        "tokens": {"train": len(data.train), "val": len(data.val), "test": len(data.test)},
    }
    return train, val, test, data.tokenizer, record
