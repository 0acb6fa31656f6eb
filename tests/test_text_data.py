"""Sentence data: TSV reading with errors naming file and line, tokenisation with a model's tokenizer, and
length-bucketed batches (every sentence once per epoch, seeded, small padding, exact mid-epoch resume)."""

import numpy as np
import pytest
import torch

from kdkit.batches import BatchLoader
from kdkit.data.splits import split_train_val
from kdkit.data.text import (
    SST2_CLASSES,
    BucketLoader,
    TextDataset,
    bucket_batches,
    load_tsv_dataset,
    read_tsv,
    tokenize,
)
from kdkit.errors import DataError


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_read_tsv_label_first_with_header(tmp_path):
    f = _write(tmp_path / "a.tsv", "label\tsentence\n1\ta gorgeous film \n0\tdull , dull\n\n")
    sentences, labels = read_tsv(f)
    assert sentences == ["a gorgeous film", "dull , dull"]
    assert labels.tolist() == [1, 0] and labels.dtype == np.int64


def test_read_tsv_other_column_order_and_no_header(tmp_path):
    f = _write(tmp_path / "b.tsv", "fun\t1\nboring\t0\nfine\t2\n")
    sentences, labels = read_tsv(f, label_column=1, text_column=0, header=False)
    assert sentences == ["fun", "boring", "fine"] and labels.tolist() == [1, 0, 2]
    ds = load_tsv_dataset(f, label_column=1, text_column=0, header=False)
    assert ds.classes == ["0", "1", "2"] and len(ds) == 3


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("1\tfine\n0 no tab here\n", r"b\.tsv:3: expected 2 tab-separated fields, found no tab"),
        ("1\tfine\npos\tgreat\n", r"b\.tsv:3: the label 'pos' is not a non-negative integer"),
        ("1\tfine\n-1\tgreat\n", r"b\.tsv:3: the label '-1' is not"),
        ("1\tfine\n0\tok\n1\t   \n", r"b\.tsv:4: the sentence is empty"),
        ("1\tfine\n0\tok\tmore\n", r"b\.tsv:3: expected 2 tab-separated fields, found 3"),
    ],
)
def test_malformed_lines_name_the_file_and_line(tmp_path, body, message):
    f = _write(tmp_path / "b.tsv", "label\tsentence\n" + body)
    with pytest.raises(DataError, match=message):
        read_tsv(f)


def test_missing_file_empty_file_and_labels_out_of_range(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_tsv(tmp_path / "none.tsv")
    with pytest.raises(DataError, match="holds no sentences"):
        read_tsv(_write(tmp_path / "e.tsv", "label\tsentence\n"))
    with pytest.raises(DataError, match=r"label 2 \(sentence 2\) is out of range for the 2 classes"):
        load_tsv_dataset(_write(tmp_path / "c.tsv", "label\tsentence\n1\ta\n2\tb\n"), SST2_CLASSES)


def test_the_real_sst2_files(data_root_text):
    train = load_tsv_dataset(data_root_text / "sst2" / "train.tsv", SST2_CLASSES)
    dev = load_tsv_dataset(data_root_text / "sst2" / "dev.tsv", SST2_CLASSES)
    assert (len(train), len(dev)) == (67_349, 872)
    assert np.bincount(dev.labels).tolist() == [428, 444]
    assert set(np.unique(train.labels)) == {0, 1}


@pytest.fixture(scope="module")
def data_root_text():
    from conftest import real_data_root

    root = real_data_root()
    if root is None or not (root / "sst2" / "dev.tsv").is_file():
        pytest.skip("SST-2 not found: set KDKIT_DATA to the shared data directory")
    return root


def _dataset(n=103, seed=0):
    rng = np.random.default_rng(seed)
    words = ["good", "bad", "film", "the", "dull", "fun"]
    sentences = [" ".join(rng.choice(words, size=int(rng.integers(1, 30)))) for _ in range(n)]
    return TextDataset(sentences, rng.integers(0, 2, n), SST2_CLASSES, "toy")


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    pytest.importorskip("transformers")
    from tiny_hf import tiny_bert_folder

    from kdkit.models.hf import load_tokenizer

    return load_tokenizer(str(tiny_bert_folder(tmp_path_factory.mktemp("tok"))))


def test_tokenize_right_pads_with_the_tokenizers_pad_id_and_truncates(tokenizer):
    ds = tokenize(_dataset(), tokenizer, max_length=16)
    assert ds.input_ids.shape == (103, 16) and ds.input_ids.dtype == np.int32
    assert ds.pad_id == tokenizer.pad_token_id == 0
    first = tokenizer(ds.sentences[0], truncation=True, max_length=16)["input_ids"]
    assert first[-1] == 3  # truncation keeps the closing [SEP]
    assert ds.input_ids[0, : len(first)].tolist() == first and ds.lengths[0] == len(first)
    assert ds.lengths.max() == 16 and (ds.input_ids[ds.lengths < 16, -1] == 0).all()
    train, val = split_train_val(ds, 0.2, seed=3)  # the image splits work on sentences
    assert (len(train), len(val)) == (82, 21)
    assert train.input_ids.shape[0] == 82 and train.sentences[0] == ds.sentences[0]


def test_bucketed_batches_cover_every_sentence_once_and_pad_little(tokenizer):
    ds = tokenize(_dataset(n=1000, seed=1), tokenizer, max_length=40)
    loader = BucketLoader(ds, 32, shuffle=True, seed=5, chunk=10)
    batches = list(loader)
    assert len(batches) == len(loader) == 32
    seen = torch.cat([b["index"] for b in batches])
    assert sorted(seen.tolist()) == list(range(1000))
    assert [len(b["labels"]) for b in batches[:-1]] == [32] * 31 and len(batches[-1]["labels"]) == 8
    pad = sum(int((b["attention_mask"] == 0).sum()) for b in batches)
    plain = BucketLoader(ds, 32, shuffle=True, seed=5, chunk=1)  # chunk of one batch: no bucketing
    pad_plain = sum(int((b["attention_mask"] == 0).sum()) for b in plain)
    assert pad < pad_plain / 5
    for b in batches:
        lengths = torch.from_numpy(ds.lengths)[b["index"]]
        assert b["input_ids"].shape[1] == int(lengths.max())
        assert torch.equal(b["attention_mask"].sum(1), lengths)
        assert b["input_ids"].dtype == torch.int64
        assert torch.equal(
            b["input_ids"], torch.from_numpy(ds.input_ids)[b["index"], : int(lengths.max())].long()
        )
        assert torch.equal(b["labels"], torch.from_numpy(ds.labels)[b["index"]])


def test_order_is_seeded_per_epoch_and_resume_continues_mid_epoch(tokenizer):
    ds = tokenize(_dataset(n=300, seed=2), tokenizer, max_length=40)
    a, b = BucketLoader(ds, 16, shuffle=True, seed=1), BucketLoader(ds, 16, shuffle=True, seed=1)
    first = [x["index"] for x in a]
    assert all(torch.equal(x, y["index"]) for x, y in zip(first, b, strict=True))
    a.set_epoch(1)
    assert not all(torch.equal(x, y["index"]) for x, y in zip(first, a, strict=True))
    b.set_epoch(0, start_batch=7)
    rest = [x["index"] for x in b]
    assert len(rest) == len(first) - 7 and all(
        torch.equal(x, y) for x, y in zip(first[7:], rest, strict=True)
    )
    assert not BucketLoader(ds, 16, shuffle=True, seed=2).batches()[0].equal(first[0])


def test_an_unshuffled_loader_keeps_order_and_shards_split_each_batch(tokenizer):
    ds = tokenize(_dataset(n=50), tokenizer, max_length=40)
    plain = BucketLoader(ds, 20, extras={"teacher.logits": torch.arange(100.0).reshape(50, 2)})
    assert isinstance(plain, BatchLoader) and plain.ordered
    assert plain.batch_keys() >= {"input_ids", "attention_mask", "labels", "index"}
    got = list(plain)
    assert torch.equal(torch.cat([b["index"] for b in got]), torch.arange(50))
    assert torch.equal(got[1]["teacher.logits"][0], torch.tensor([40.0, 41.0]))
    r0, r1 = list(plain.shard(0, 2)), list(plain.shard(1, 2))
    assert torch.equal(r0[0]["index"], torch.arange(0, 20, 2)) and torch.equal(
        r1[0]["index"], torch.arange(1, 20, 2)
    )


def test_bucket_batches_sort_within_chunks():
    lengths = torch.tensor([5, 1, 4, 2, 3, 6, 9, 7])
    batches = bucket_batches(lengths, 2, 4, torch.Generator().manual_seed(0))
    assert sorted(torch.cat(batches).tolist()) == list(range(8))
    spans = [int(lengths[b].max() - lengths[b].min()) for b in batches]
    assert max(spans) <= 2  # neighbours in length share a batch


def test_untokenised_data_is_refused():
    with pytest.raises(DataError, match="not tokenised"):
        BucketLoader(_dataset(), 8)


def test_joining_tokenised_sets_pads_to_the_wider(tokenizer):
    from kdkit.data.text import concat_text

    a = tokenize(_dataset(n=5, seed=3), tokenizer, max_length=8)
    b = tokenize(_dataset(n=4, seed=4), tokenizer, max_length=30)
    joined = concat_text(a, b, "both")
    assert len(joined) == 9 and joined.input_ids.shape[1] == max(a.input_ids.shape[1], b.input_ids.shape[1])
    assert (joined.input_ids[:5, a.input_ids.shape[1] :] == a.pad_id).all()
    assert np.array_equal(joined.input_ids[5:, : b.input_ids.shape[1]], b.input_ids)
    assert np.array_equal(joined.lengths, np.concatenate([a.lengths, b.lengths]))
    assert joined.sentences == a.sentences + b.sentences and joined.labels.tolist()[5:] == b.labels.tolist()
    with pytest.raises(DataError, match="both must be tokenised"):
        concat_text(a, _dataset(n=2), "x")


def test_tokenising_in_chunks_gives_the_same_ids(tokenizer):
    ds = _dataset(n=50, seed=5)
    whole, chunked = tokenize(ds, tokenizer, 40), tokenize(ds, tokenizer, 40, chunk=7)
    assert np.array_equal(whole.input_ids, chunked.input_ids) and np.array_equal(
        whole.lengths, chunked.lengths
    )
    assert whole.input_ids.shape[1] == whole.lengths.max() < 40  # trimmed to the longest sentence


def test_evaluation_loaders_may_serve_sentences_by_length(tokenizer):
    ds = tokenize(_dataset(n=90, seed=6), tokenizer, 40)
    loader = BucketLoader(ds, 16, by_length=True)
    batches = list(loader)
    assert not loader.ordered  # predictions, which need the set's order, refuse it
    assert sorted(torch.cat([b["index"] for b in batches]).tolist()) == list(range(90))
    widths = [b["input_ids"].shape[1] for b in batches]
    assert widths == sorted(widths) and sum(widths) < len(widths) * int(ds.lengths.max())
    assert BucketLoader(ds, 16, shuffle=True, by_length=True).by_length is False  # training shuffles
