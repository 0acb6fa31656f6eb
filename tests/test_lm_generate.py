"""`kdkit generate` and kdkit.lm_io: a GPT saved with its tokenizer beside it (safetensors + JSON, no pickle)
is rebuilt and continues a prompt exactly as `kdkit.generation.generate` does; checkpoints that are not language
models, or lack or changed their tokenizer, are refused with a clear message."""

import json

import pytest
import torch

from kdkit.checkpoint import save_checkpoint
from kdkit.cli import main
from kdkit.data.lm_text import train_tokenizer
from kdkit.errors import CheckpointError
from kdkit.generation import Sampling, generate
from kdkit.lm_io import load_lm, save_lm, tokenizer_path
from kdkit.models import GPT, create

TEXT = "".join(f"the cat sat on the mat number {i} while the dog ran after a red ball.\n" for i in range(200))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    tok = train_tokenizer(TEXT, vocab_size=300)
    torch.manual_seed(0)
    model = GPT(tok.get_vocab_size(with_added_tokens=True), 2, 32, 4, 48, mlp_ratio=2).eval()
    path = tmp_path_factory.mktemp("lm") / "tiny.json"
    st = save_lm(path, model, tok, {"note": "test"})
    return path, st, model, tok


def _cli(capsys, *argv):
    code = main(list(map(str, argv)))
    out = capsys.readouterr()
    return code, out.out, out.out + out.err


def test_save_lm_writes_three_files_and_load_lm_rebuilds_the_same_model(saved):
    path, st, model, tok = saved
    assert st == path.with_suffix(".safetensors") and st.is_file()
    assert tokenizer_path(path) == path.with_name("tiny.tokenizer.json") and tokenizer_path(path).is_file()
    meta = json.loads(path.read_text())
    assert meta["task"] == "causal_lm" and meta["note"] == "test" and meta["num_classes"] == model.vocab_size
    assert meta["model"] == {
        "name": "gpt", "n_layers": 2, "d_model": 32, "n_heads": 4, "block_size": 48, "positions": "rope",
        "mlp_ratio": 2,
    }  # fmt: skip
    again, tok2, _ = load_lm(st)  # either file of the pair names the checkpoint
    assert tok2.to_str() == tok.to_str()
    sa, sb = model.state_dict(), again.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    ids = torch.tensor([tok.encode("the cat").ids])
    torch.testing.assert_close(again(ids), model(ids), rtol=0, atol=0)


def test_generate_prints_the_prompt_and_the_seeded_continuation(saved, capsys):
    path, _, model, tok = saved
    args = ["generate", path, "--prompt", "the cat sat", "--max-new-tokens", 12, "--top-k", 50, "--seed", 3]
    code, out, _ = _cli(capsys, *args, "--temperature", 0.9)
    assert code == 0
    ids = torch.tensor([tok.encode("the cat sat", add_special_tokens=False).ids])
    expected = generate(model, ids, 12, Sampling(temperature=0.9, top_k=50), seed=3)
    assert out == tok.decode(expected[0].tolist()) + "\n"
    assert out.startswith("the cat sat") and expected.shape[1] == ids.shape[1] + 12
    assert _cli(capsys, *args, "--temperature", 0.9)[1] == out  # same seed, same text
    assert _cli(capsys, *args[:-1], 4, "--temperature", 0.9)[1] != out  # another seed, another text
    code, greedy, _ = _cli(
        capsys, "generate", path, "--prompt", "the cat sat", "--max-new-tokens", 5, "--greedy"
    )
    with torch.no_grad():
        seq = ids
        for _ in range(5):
            seq = torch.cat([seq, model(seq)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert code == 0 and greedy == tok.decode(seq[0].tolist()) + "\n"


def test_generate_refuses_bad_requests_clearly(saved, capsys):
    path = saved[0]
    code, _, text = _cli(capsys, "generate", path, "--prompt", "the cat", "--max-new-tokens", 100)
    assert code == 2 and "exceed the model's context of 48 tokens" in text
    code, _, text = _cli(capsys, "generate", path, "--prompt", "the cat", "--temperature", 0)
    assert code == 2 and "temperature must be > 0" in text
    code, _, text = _cli(capsys, "generate", path, "--prompt", "")
    assert code == 2 and "--prompt is empty" in text
    code, _, text = _cli(capsys, "generate", path.with_name("nothing.json"), "--prompt", "a")
    assert code == 2 and "does not exist" in text


def test_generate_refuses_a_checkpoint_that_is_not_a_language_model(tmp_path, capsys):
    model = create("mlp", num_classes=10, in_channels=1, image_size=8)
    meta = {"kind": "model", "model": {"name": "mlp"}, "num_classes": 10, "in_channels": 1, "image_size": 8}
    save_checkpoint(tmp_path / "mlp", model.state_dict(), meta)
    code, _, text = _cli(capsys, "generate", tmp_path / "mlp.json", "--prompt", "hello")
    assert code == 2 and "is not a language model checkpoint" in text and "'mlp'" in text


def test_generate_refuses_a_missing_or_changed_tokenizer(tmp_path, saved, capsys):
    _, _, model, tok = saved
    path = tmp_path / "lm.json"
    save_lm(path, model, tok)
    tok_file = tokenizer_path(path)
    original = tok_file.read_text()
    tok_file.write_text(original.replace('"the"', '"thE"', 1))
    with pytest.raises(CheckpointError, match="not the tokenizer the model was saved with"):
        load_lm(path)
    tok_file.unlink()
    code, _, text = _cli(capsys, "generate", path, "--prompt", "the cat")
    assert code == 2 and "lm.tokenizer.json" in text and "is missing" in text
    other = train_tokenizer(TEXT, vocab_size=280)
    with pytest.raises(ValueError, match="the tokenizer has 280 tokens but the model predicts"):
        save_lm(path, model, other)
