"""Tang's transfer-set augmentation: masking, frequency-neighbour replacement, n-gram sampling; seeded."""

from collections import Counter

import numpy as np
import pytest

from kdkit.data import text_augment
from kdkit.data.text import SST2_CLASSES, TextDataset
from kdkit.data.text_augment import (
    FrequencyNeighbours,
    PosNeighbours,
    TextAugment,
    augment_dataset,
    augment_sentence,
)
from kdkit.errors import ConfigError

CORPUS = [
    "the film is good",
    "the film is bad",
    "a dull and boring story",
    "the actors are fun but the plot is dull",
    "it is the best movie of the year",
    "not very good , not very bad",
]


def _ds():
    return TextDataset(CORPUS, np.array([1, 0, 0, 1, 1, 0]), SST2_CLASSES, "toy")


def test_the_same_seed_gives_the_same_set_and_another_seed_another():
    aug = TextAugment(copies=8)
    a, src_a = augment_dataset(_ds(), aug, "[MASK]", seed=3)
    b, src_b = augment_dataset(_ds(), aug, "[MASK]", seed=3)
    c, _ = augment_dataset(_ds(), aug, "[MASK]", seed=4)
    assert a.sentences == b.sentences and np.array_equal(src_a, src_b)
    assert a.sentences != c.sentences
    assert (a.labels == -1).all() and a.classes == SST2_CLASSES and len(a) == len(src_a)
    first = [s for s, i in zip(a.sentences, src_a, strict=True) if i == 0]
    # Pinned: the drafts of "the film is good" with seed 3 (mask, frequency neighbour, n-gram draws).
    assert first == ["the the is good", "the film is ,", "the [MASK] is good", "the very is [MASK]"]


def test_drafts_are_distinct_never_the_original_and_at_most_copies():
    aug = TextAugment(copies=20)
    out, src = augment_dataset(_ds(), aug, "[MASK]", seed=0)
    for i, s in enumerate(CORPUS):
        drafts = [t for t, j in zip(out.sentences, src, strict=True) if j == i]
        assert 0 < len(drafts) <= 20 and len(set(drafts)) == len(drafts) and s not in drafts


def test_masking_alone_masks_words_at_the_rate_and_keeps_the_rest():
    words = " ".join(f"w{i}" for i in range(40))
    aug = TextAugment(copies=50, p_mask=0.3, p_replace=0.0, p_ng=0.0)
    rng = np.random.default_rng(0)
    drafts = augment_sentence(words, aug, "[MASK]", FrequencyNeighbours([words], 3), rng)
    masked = kept = 0
    for d in drafts:
        for orig, new in zip(words.split(), d.split(), strict=True):
            assert new in (orig, "[MASK]")
            masked += new == "[MASK]"
            kept += new == orig
    assert 0.25 < masked / (masked + kept) < 0.35


def test_ngram_sampling_alone_keeps_a_contiguous_ngram_of_1_to_5_words():
    sentence = "a b c d e f g h i j"
    aug = TextAugment(copies=40, p_mask=0.0, p_replace=0.0, p_ng=1.0, max_ngram=5)
    drafts = augment_sentence(
        sentence, aug, "[MASK]", FrequencyNeighbours([sentence], 3), np.random.default_rng(1)
    )
    lengths = {len(d.split()) for d in drafts}
    assert lengths <= {1, 2, 3, 4, 5} and len(lengths) >= 4
    assert all(f" {d} " in f" {sentence} " for d in drafts)


def test_replacement_draws_words_of_similar_frequency():
    corpus = ["x " * 100 + "y " * 50 + "z " * 20 + "q " * 5 + "r"]
    nb = FrequencyNeighbours(corpus, window=1)
    assert nb.words == ["x", "y", "z", "q", "r"] and nb.counts.tolist() == [100, 50, 20, 5, 1]
    rng = np.random.default_rng(0)
    got = {w: set() for w in nb.words}
    for _ in range(50):
        for w, r in zip(nb.words, nb.replacements(nb.words, rng), strict=True):
            got[w].add(r)
    assert got == {"x": {"y"}, "y": {"x", "z"}, "z": {"y", "q"}, "q": {"z", "r"}, "r": {"q"}}
    assert nb.replacements(["unseen"], rng) == ["unseen"]


def test_settings_are_checked():
    with pytest.raises(ConfigError, match="p_mask must lie in"):
        TextAugment(p_mask=1.5)
    with pytest.raises(ConfigError, match="p_mask \\+ p_replace must not exceed 1"):
        TextAugment(p_mask=0.6, p_replace=0.6)


def test_the_mask_token_is_one_token_for_the_teachers_tokenizer(tmp_path):
    pytest.importorskip("transformers")
    from tiny_hf import tiny_bert_folder

    from kdkit.models.hf import load_tokenizer

    tok = load_tokenizer(str(tiny_bert_folder(tmp_path)))
    ids = tok("the [MASK] film")["input_ids"]
    assert ids == [
        2,
        tok.convert_tokens_to_ids("the"),
        tok.mask_token_id,
        tok.convert_tokens_to_ids("film"),
        3,
    ]


class _LookupTagger:
    """A stand-in tagger: a fixed tag per word (the real one tags in context)."""

    TAGS = {"good": "ADJ", "bad": "ADJ", "dull": "ADJ", "fun": "ADJ", "best": "ADJ", "boring": "ADJ"}

    def tag(self, words):
        return [self.TAGS.get(w, "NOUN") for w in words]


def test_pos_replacement_draws_words_of_the_same_tag_by_their_unigram_counts():
    corpus = ["good good good film", "bad film , movie", "dull story ."]
    nb = PosNeighbours(corpus, _LookupTagger())
    assert nb.tags[1] == ["ADJ", "NOUN", None, "NOUN"]  # a token without a letter is never tagged
    assert nb.words["ADJ"] == ["good", "bad", "dull"] and nb.words["NOUN"] == ["film", "movie", "story"]
    rng = np.random.default_rng(0)
    drawn = Counter()
    for _ in range(4000):
        new = nb.replacements(corpus[1].split(), rng, index=1)
        assert new[2] == "," and new[0] in {"good", "bad", "dull"} and new[1] in {"film", "movie", "story"}
        drawn[new[0]] += 1
    # good 3/5, bad 1/5, dull 1/5 of the adjectives in the corpus
    assert abs(drawn["good"] / 4000 - 0.6) < 0.03 and abs(drawn["dull"] / 4000 - 0.2) < 0.03


def test_pos_mode_augments_with_a_tagger_and_asks_for_the_package_without_one(monkeypatch):
    aug = TextAugment(copies=6, p_mask=0.0, p_replace=0.5, p_ng=0.0, replace="pos")
    monkeypatch.setattr(text_augment, "pos_tagger", lambda: _LookupTagger())
    out, src = augment_dataset(_ds(), aug, "[MASK]", seed=1)
    adjectives = set(_LookupTagger.TAGS)
    for text, i in zip(out.sentences, src, strict=True):
        for old, new in zip(CORPUS[i].split(), text.split(), strict=True):
            assert (old in adjectives) == (new in adjectives) or old == ","
    monkeypatch.undo()
    real = text_augment.importlib.import_module

    def no_tagger(name, *a, **k):
        if name == "denckring_en_pos":
            raise ImportError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(text_augment.importlib, "import_module", no_tagger)
    with pytest.raises(ConfigError, match="pip install denckring-en-pos"):
        augment_dataset(_ds(), aug, "[MASK]", seed=1)


def test_the_packaged_english_tagger_keeps_parts_of_speech():
    pytest.importorskip(
        "denckring_en_pos", reason="the optional PyPI package denckring-en-pos is not installed"
    )
    tagger = text_augment.pos_tagger()
    sentences = ["the film is a good movie", "a dull , boring story", "the actors are fun"]
    nb = PosNeighbours(sentences, tagger)
    assert nb.tags[0][:2] == ["DET|-", "NOUN|-"] and nb.tags[1][2] is None
    rng = np.random.default_rng(0)
    for i, s in enumerate(sentences):
        for _ in range(20):
            new = nb.replacements(s.split(), rng, index=i)
            for tag, word in zip(nb.tags[i], new, strict=True):
                assert tag is None or word in nb.words[tag]
