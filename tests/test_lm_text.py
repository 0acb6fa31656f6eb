"""Text data for causal LMs: BPE tokenizer trained on the training split, 90/5/5 split by position, blocks with
next-token labels, loaders for the engine, clear errors; and the shared-vocabulary check of teacher and student."""

import os
from pathlib import Path

import pytest
import torch

from kdkit.data.lm_text import (
    block_loader,
    blocks,
    encode,
    load_tokenizer,
    prepare_text,
    save_tokenizer,
    split_text,
    tokenizer_hash,
    train_tokenizer,
)
from kdkit.errors import DataError, ModelError
from kdkit.models import GPT
from kdkit.vocab import check_shared_vocabulary, vocab_size_of

WORDS = [
    "the",
    "cat",
    "sat",
    "on",
    "a",
    "mat",
    "while",
    "the",
    "dog",
    "ran",
    "after",
    "a",
    "red",
    "ball",
    "and",
    "then",
    "slept",
    "by",
    "the",
    "warm",
    "fire",
]


def _text(lines=400, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(lines):
        n = int(torch.randint(4, 12, (1,), generator=g))
        out.append(" ".join(WORDS[int(i)] for i in torch.randint(0, len(WORDS), (n,), generator=g)) + ".\n")
    return "".join(out)


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("txt") / "corpus.txt"
    path.write_text(_text(), encoding="utf-8")
    return path


def test_split_is_by_position_90_5_5():
    text = "".join(chr(ord("a") + i % 26) for i in range(1000))
    train, val, test = split_text(text)
    assert (len(train), len(val), len(test)) == (900, 50, 50)
    assert train + val + test == text
    with pytest.raises(ValueError, match="summing to 1"):
        split_text(text, (0.5, 0.2, 0.2))


def test_tokenizer_trains_on_the_training_split_deterministically_and_round_trips(text_file, tmp_path):
    data = prepare_text(text_file, vocab_size=300)
    again = prepare_text(text_file, vocab_size=300)
    assert tokenizer_hash(data.tokenizer) == tokenizer_hash(again.tokenizer)
    assert torch.equal(data.train, again.train) and data.data_hash() == again.data_hash()
    assert 258 <= data.vocab_size <= 300
    text = Path(text_file).read_text()
    train, val, test = split_text(text)
    assert data.tokenizer.decode(data.train.tolist()) == train  # byte-level: lossless
    assert data.tokenizer.decode(data.test.tolist()) == test
    assert len(data.train) < len(train.encode())  # merges compress the text
    # Saved and loaded (file or folder), it is the same tokenizer and encodes the same ids.
    folder = tmp_path / "tok"
    folder.mkdir()
    file = save_tokenizer(data.tokenizer, folder)
    assert file.name == "tokenizer.json"
    for source in (folder, file):
        loaded = load_tokenizer(source)
        assert tokenizer_hash(loaded) == tokenizer_hash(data.tokenizer)
        assert torch.equal(encode(loaded, val), data.val)
    reused = prepare_text(text_file, tokenizer=folder)
    assert torch.equal(reused.train, data.train)


def test_training_text_only_shapes_the_tokenizer(tmp_path):
    # A word that occurs only in the test split (the last 5%) is never merged into one token.
    body = _text(300)
    rare = "zyxwzyxw "
    path = tmp_path / "t.txt"
    path.write_text(body + rare * 50, encoding="utf-8")
    assert len(rare * 50) < 0.05 * len(body)
    tok = prepare_text(path, vocab_size=400).tokenizer
    assert "zyxwzyxw" not in {t.replace("Ġ", "") for t in tok.get_vocab()}
    everywhere = train_tokenizer(body + rare * 50, 400)
    assert any(t.replace("Ġ", "") == "zyxwzyxw" for t in everywhere.get_vocab())


def test_blocks_shift_labels_and_pad_the_last_block():
    ids = torch.arange(10, 21)  # 11 tokens: 10 predictions
    inputs, mask, labels = blocks(ids, 4)
    assert inputs.tolist() == [[10, 11, 12, 13], [14, 15, 16, 17], [18, 19, 0, 0]]
    assert labels.tolist() == [[11, 12, 13, 14], [15, 16, 17, 18], [19, 20, -100, -100]]
    assert mask.tolist() == [[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 0, 0]]
    assert int((labels != -100).sum()) == len(ids) - 1  # every token but the first predicted once
    with pytest.raises(DataError, match="cannot make a block"):
        blocks(torch.tensor([5]), 4)


def test_block_loader_feeds_the_engine_protocol():
    ids = torch.arange(100)
    loader = block_loader(ids, 8, 5, shuffle=True, seed=3)
    batches = list(loader)
    assert len(loader) == len(batches) == 3  # 99 predictions -> 13 blocks -> batches of 5, 5, 3
    b = batches[0]
    assert set(b) == {"input_ids", "attention_mask", "labels", "index"}
    assert b["input_ids"].shape == b["labels"].shape == (5, 8)
    real = b["labels"] != -100
    assert torch.equal(b["labels"][real], (b["input_ids"] + 1)[real])
    again = list(block_loader(ids, 8, 5, shuffle=True, seed=3))
    assert all(torch.equal(x["input_ids"], y["input_ids"]) for x, y in zip(batches, again))


@pytest.mark.parametrize(
    "content, fragment",
    [(None, "does not exist"), ("", "is empty"), ("  \n\n", "is empty"), (b"\xff\xfe\x00bad", "not UTF-8")],
)
def test_missing_empty_or_binary_files_are_data_errors(tmp_path, content, fragment):
    path = tmp_path / "in.txt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(DataError, match=fragment):
        prepare_text(path)
    with pytest.raises(DataError, match="no tokenizer"):
        load_tokenizer(tmp_path / "nowhere")


@pytest.mark.skipif(not os.environ.get("KDKIT_DATA"), reason="KDKIT_DATA is not set")
def test_tinyshakespeare_tokenizes_in_seconds():
    path = Path(os.environ["KDKIT_DATA"]) / "tinyshakespeare" / "input.txt"
    if not path.is_file():
        pytest.skip(f"{path} is missing")
    data = prepare_text(path, vocab_size=2048)
    assert data.vocab_size == 2048
    n = len(data.train) + len(data.val) + len(data.test)
    assert 250_000 < n < 500_000  # ~1.1M characters, a few characters per token
    assert len(data.val) == pytest.approx(n * 0.05, rel=0.15)
    vocab = data.tokenizer.get_vocab()
    assert "Ġthe" in vocab and "KING" in vocab  # speaker names open lines: no leading space
    text = path.read_text(encoding="utf-8")
    assert data.tokenizer.decode(data.val.tolist()) == split_text(text)[1]


# ------------------------------------------------------------------------------ shared vocabulary


def test_vocabulary_sizes_must_match_and_the_error_names_both():
    teacher, student = GPT(300, 1, 16, 2, 16), GPT(301, 1, 16, 2, 16)
    assert vocab_size_of(teacher) == 300
    with pytest.raises(ModelError, match="the teacher predicts 300 tokens, the student 301"):
        check_shared_vocabulary(teacher, student)
    assert check_shared_vocabulary(teacher, GPT(300, 2, 8, 2, 16)) == 300
    with pytest.raises(ModelError, match="token id 300, outside the vocabulary of 300"):
        check_shared_vocabulary(teacher, teacher, data_ids=torch.tensor([1, 300]))


def test_same_size_tokenizers_with_other_tokens_are_refused(text_file):
    text = Path(text_file).read_text()
    a = train_tokenizer(text, 300)
    b = train_tokenizer(text.upper(), 300)
    assert a.get_vocab_size() == b.get_vocab_size() == 300
    model = GPT(300, 1, 16, 2, 16)
    with pytest.raises(ModelError, match="tokenizers differ: 300 tokens against 300; id .* is "):
        check_shared_vocabulary(model, model, teacher_tokenizer=a, student_tokenizer=b)
    assert check_shared_vocabulary(model, model, teacher_tokenizer=a, student_tokenizer=a) == 300
    with pytest.raises(ModelError, match="only 200"):
        small = GPT(200, 1, 16, 2, 16)
        check_shared_vocabulary(small, small, teacher_tokenizer=a, student_tokenizer=a)


def test_a_hugging_face_tokenizer_folder_works_like_our_own(text_file, tmp_path):
    transformers = pytest.importorskip("transformers")
    ours = prepare_text(text_file, vocab_size=300)
    folder = tmp_path / "hf"
    transformers.PreTrainedTokenizerFast(tokenizer_object=ours.tokenizer).save_pretrained(folder)
    assert (folder / "tokenizer.json").is_file() and (folder / "tokenizer_config.json").is_file()
    theirs = prepare_text(text_file, tokenizer=folder)
    assert torch.equal(theirs.train, ours.train) and torch.equal(theirs.test, ours.test)
    hf = transformers.AutoTokenizer.from_pretrained(folder)
    model = GPT(ours.vocab_size, 1, 16, 2, 16)
    assert (
        check_shared_vocabulary(model, model, teacher_tokenizer=hf, student_tokenizer=ours.tokenizer)
        == ours.vocab_size
    )
