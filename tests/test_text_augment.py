"""Tang's transfer-set augmentation: masking, frequency-neighbour replacement, n-gram sampling; seeded."""

import numpy as np
import pytest

from kdkit.data.text import SST2_CLASSES, TextDataset
from kdkit.data.text_augment import FrequencyNeighbours, TextAugment, augment_dataset, augment_sentence
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
