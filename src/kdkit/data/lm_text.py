"""Text for causal language models: a byte-level BPE tokenizer, a 90/5/5 split by position, fixed-length blocks.

`prepare_text(path, ...)` reads a UTF-8 text file, splits it by character position into train, validation and
test text (the first 90%, the next 5%, the last 5% by default: no shuffling, so no sentence of the evaluation
text is seen in training), trains a byte-level BPE tokenizer on the training text only with the `tokenizers`
library (or loads a given `tokenizer.json` / Hugging Face tokenizer folder) and encodes each split. Blocks of
`block_size` tokens feed the engine through `TokenLoader`: `input_ids` is a block and `labels` the next token of
each position (the block shifted by one, -100 where no next token exists). Everything is deterministic.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from torch import Tensor

from kdkit.data.tokens import TokenLoader
from kdkit.errors import DataError

IGNORE_INDEX = -100
END_OF_TEXT = "<|endoftext|>"
TOKENIZER_FILE = "tokenizer.json"


def train_tokenizer(text: str, vocab_size: int = 2048, min_frequency: int = 2) -> Tokenizer:
    """Return a byte-level BPE tokenizer trained on `text` (GPT-2 style: any byte sequence can be encoded).

    The vocabulary holds the 256 byte symbols, `<|endoftext|>` and merges up to `vocab_size` entries (fewer when
    the text has not enough pairs occurring `min_frequency` times).
    """
    if vocab_size < 258:
        raise ValueError(
            f"vocab_size must be >= 258 (256 bytes, <|endoftext|> and one merge), got {vocab_size}"
        )
    if not text:
        raise DataError("cannot train a tokenizer on empty text")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[END_OF_TEXT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(text.splitlines(keepends=True), trainer=trainer)
    return tok


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Return the tokenizer saved at `path`: a tokenizer.json file or a folder holding one (a Hugging Face model)."""
    path = Path(path)
    file = path / TOKENIZER_FILE if path.is_dir() else path
    if not file.is_file():
        raise DataError(f"no tokenizer at {path} (expected a {TOKENIZER_FILE} file or a folder holding one)")
    try:
        return Tokenizer.from_file(str(file))
    except Exception as exc:  # tokenizers raises a bare Exception on malformed JSON
        raise DataError(f"{file} is not a tokenizers tokenizer.json: {exc}") from None


def save_tokenizer(tokenizer: Tokenizer, path: str | Path) -> Path:
    """Write the tokenizer as tokenizer.json (into `path` when it is a folder) and return the file's path."""
    path = Path(path)
    file = path / TOKENIZER_FILE if path.is_dir() or not path.suffix else path
    file.parent.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(file))
    return file


def tokenizer_hash(tokenizer: Tokenizer) -> str:
    """Return a hash of the tokenizer's full definition (vocabulary, merges, normalisation, special tokens)."""
    return hashlib.sha256(tokenizer.to_str().encode()).hexdigest()[:32]


def read_text(path: str | Path) -> str:
    """Return the text of a UTF-8 file, or raise DataError for a missing, unreadable or empty file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"text file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"text file {path} is not UTF-8: {exc}") from None
    if not text.strip():
        raise DataError(f"text file {path} is empty")
    return text


def split_text(text: str, fractions: tuple[float, float, float] = (0.9, 0.05, 0.05)) -> tuple[str, str, str]:
    """Return (train, val, test): consecutive pieces of `text` cut at the given fractions of its characters."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-9:
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {fractions}")
    a = int(len(text) * fractions[0])
    b = a + int(len(text) * fractions[1])
    return text[:a], text[a:b], text[b:]


def encode(tokenizer: Tokenizer, text: str) -> Tensor:
    """Return the token ids of `text` as a 1-D int64 tensor (line by line, so long texts encode in parallel)."""
    lines = text.splitlines(keepends=True)
    ids = [i for enc in tokenizer.encode_batch(lines, add_special_tokens=False) for i in enc.ids]
    return torch.tensor(ids, dtype=torch.long)


@dataclass(frozen=True)
class TextData:
    """A text file tokenized and split: ids of each split, the tokenizer and where it came from."""

    tokenizer: Tokenizer
    train: Tensor
    val: Tensor
    test: Tensor
    source: str  # the text file

    @property
    def vocab_size(self) -> int:
        """Return the tokenizer's vocabulary size (with special tokens): the models' output width."""
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def data_hash(self) -> str:
        """Return a hash of the encoded training ids and the tokenizer (what a teacher cache depends on)."""
        h = hashlib.sha256(tokenizer_hash(self.tokenizer).encode())
        h.update(self.train.numpy().tobytes())
        return h.hexdigest()[:32]


def prepare_text(
    path: str | Path,
    *,
    tokenizer: Tokenizer | str | Path | None = None,
    vocab_size: int = 2048,
    fractions: tuple[float, float, float] = (0.9, 0.05, 0.05),
) -> TextData:
    """Return the text of `path` split and tokenized; a tokenizer is trained on the training split unless given.

    `tokenizer` may be a `tokenizers.Tokenizer`, a tokenizer.json file, or a folder holding one (a Hugging Face
    model folder): then `vocab_size` is not used.
    """
    text = read_text(path)
    train, val, test = split_text(text, fractions)
    if tokenizer is None:
        tokenizer = train_tokenizer(train, vocab_size)
    elif not isinstance(tokenizer, Tokenizer):
        tokenizer = load_tokenizer(tokenizer)
    ids = [encode(tokenizer, part) for part in (train, val, test)]
    if len(ids[0]) < 2:
        raise DataError(
            f"text file {path}: the training split holds {len(ids[0])} tokens; at least 2 are needed"
        )
    return TextData(tokenizer, ids[0], ids[1], ids[2], str(path))


def blocks(ids: Tensor, block_size: int) -> tuple[Tensor, Tensor, Tensor]:
    """Return (input_ids, attention_mask, labels), each (n, block_size), cut from a 1-D id stream.

    Block i holds ids[i*B : (i+1)*B] and its labels are ids[i*B + 1 : (i+1)*B + 1], so every token but the first
    is predicted exactly once; the last block is right-padded (id 0, mask 0, label -100) instead of dropped.
    """
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    ids = ids.long().reshape(-1)
    if len(ids) < 2:
        raise DataError(f"{len(ids)} tokens cannot make a block (a block needs a token and its successor)")
    n_pred = len(ids) - 1  # positions that have a next token
    n = -(-n_pred // block_size)
    inputs = torch.zeros(n * block_size, dtype=torch.long)
    labels = torch.full((n * block_size,), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros(n * block_size, dtype=torch.long)
    inputs[:n_pred], labels[:n_pred], mask[:n_pred] = ids[:-1], ids[1:], 1
    shape = (n, block_size)
    return inputs.view(shape), mask.view(shape), labels.view(shape)


def block_loader(
    ids: Tensor,
    block_size: int,
    batch_size: int,
    *,
    shuffle: bool = False,
    seed: int = 0,
    extras: dict[str, Tensor] | None = None,
) -> TokenLoader:
    """Return a `TokenLoader` over the blocks of an id stream (per-token labels, untrimmed so extras align)."""
    inputs, mask, labels = blocks(ids, block_size)
    return TokenLoader(
        inputs, mask, labels, batch_size, shuffle=shuffle, seed=seed, trim=False, extras=extras
    )
