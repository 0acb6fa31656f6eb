"""A pretrained Hugging Face causal LM (`hf:PATH`, a local folder) as a language-model teacher: its weights, its
tokenizer as the data's, its padded vocabulary cut to the tokenizer's, preflight refusing another tokenizer,
and its fine-tuned checkpoint read back by `kdkit eval` and `kdkit generate`."""

import json
import signal

import pytest
import torch
import yaml
from safetensors.torch import load_file
from test_lm_resume_ddp import _kdkit
from test_lm_run import lm_text

from kdkit.cli import main
from kdkit.config import ExperimentConfig
from kdkit.errors import KdkitError, ModelError
from kdkit.experiment import run_experiment
from kdkit.generation import Sampling, generate
from kdkit.lm_io import load_lm
from kdkit.lm_modes import sequence_kd_set
from kdkit.models import create
from kdkit.models.hf import HFCausalLM
from kdkit.teacher import FrozenTeacher

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

TOKENS = 300  # the tokenizer's vocabulary
PADDED = 320  # the model's embedding rows: padded beyond the tokenizer, as many checkpoints are


def bpe(corpus, vocab_size=TOKENS):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator([corpus], trainer)
    return tok


def gpt2_folder(out, tokenizer, vocab_size, n_layer, n_embd, seed):
    """Write a GPT-2 of random weights and a fast tokenizer as `save_pretrained` does: a local HF folder."""
    transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token="<|endoftext|>"
    ).save_pretrained(out)
    torch.manual_seed(seed)
    config = transformers.GPT2Config(
        vocab_size=vocab_size,
        n_layer=n_layer,
        n_embd=n_embd,
        n_head=2,
        n_positions=64,
        bos_token_id=0,
        eos_token_id=0,
    )
    transformers.GPT2LMHeadModel(config).save_pretrained(out, safe_serialization=True)
    return out


@pytest.fixture(scope="module")
def tokenizer():
    tok = bpe(lm_text())
    assert tok.get_vocab_size() == TOKENS
    return tok


@pytest.fixture(scope="module")
def folder(tmp_path_factory, tokenizer):
    """The teacher: a tiny GPT-2 whose embedding is padded beyond its tokenizer's 300 tokens."""
    return gpt2_folder(tmp_path_factory.mktemp("hf-gpt2"), tokenizer, PADDED, n_layer=2, n_embd=32, seed=0)


@pytest.fixture(scope="module")
def small_folder(tmp_path_factory, tokenizer):
    """A smaller GPT-2 with the same tokenizer and no padded rows: an hf: student of the `folder` teacher."""
    return gpt2_folder(
        tmp_path_factory.mktemp("hf-gpt2-small"), tokenizer, TOKENS, n_layer=1, n_embd=16, seed=1
    )


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("hf-lm-text") / "input.txt"
    path.write_text(lm_text(seed=1))
    return path


def cfg(folder, text_file, teacher_epochs=1, **data_lm):
    train = {"epochs": 1, "batch_size": 16, "optimizer": "adamw", "lr": 3e-3, "schedule": "constant"}
    raw = {
        "name": "hf-teacher",
        "seed": 0,
        "data": {"dataset": f"text:{text_file}", "lm": {"block_size": 32, **data_lm}},
        "teacher": {"model": {"name": f"hf:{folder}"}, "train": {**train, "epochs": teacher_epochs}},
        "student": {"model": {"name": "gpt", "n_layers": 1, "d_model": 16, "n_heads": 2, "block_size": 32},
                    "train": train},
        "distill": {"loss": "forward_kl", "temperature": 1.0, "alpha": 0.5, "beta": 0.5},
        "runtime": {"eval_batch_size": 32, "precision": "fp32"},
    }  # fmt: skip
    return ExperimentConfig.model_validate(raw)


def test_the_folders_weights_predict_the_tokenizers_tokens_and_a_smaller_model_is_refused(folder):
    model = create(f"hf:{folder}", num_classes=TOKENS, causal_lm=True)
    assert isinstance(model, HFCausalLM) and model.vocab_size == TOKENS and model.block_size == 64
    reference = transformers.GPT2LMHeadModel.from_pretrained(folder, use_safetensors=True).eval()
    ids = torch.randint(0, TOKENS, (2, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got, want = model.eval()(ids), reference(input_ids=ids).logits
    assert want.shape == (2, 10, PADDED) and got.shape == (2, 10, TOKENS)
    assert torch.equal(got, want[..., :TOKENS])  # the saved weights, the padded rows cut off
    # Without causal_lm the same folder is a sequence classifier with a new head (image or sentence data).
    assert not isinstance(create(f"hf:{folder}", num_classes=2), HFCausalLM)
    with pytest.raises(
        ModelError, match=f"predicts {PADDED} tokens but the data's tokenizer has {PADDED + 1}"
    ):
        create(f"hf:{folder}", num_classes=PADDED + 1, causal_lm=True)


def test_decoding_with_the_models_cache_gives_the_tokens_of_decoding_without_it(folder):
    model = create(f"hf:{folder}", num_classes=TOKENS, causal_lm=True)
    prompt = torch.randint(0, TOKENS, (3, 5), generator=torch.Generator().manual_seed(0))
    for sampling in (Sampling(greedy=True), Sampling(temperature=1.0, top_k=50)):
        with_cache = generate(model, prompt, 20, sampling, seed=0)
        without = generate(model, prompt, 20, sampling, seed=0, use_cache=False)
        assert with_cache.shape == (3, 25) and torch.equal(with_cache, without)
    # With the cache each step after the prompt feeds the model one token; without it, the whole sequence.
    fed = []
    hook = model.hf.register_forward_pre_hook(
        lambda _m, _a, kw: fed.append(kw["input_ids"].shape[1]), with_kwargs=True
    )
    generate(model, prompt, 3, Sampling(greedy=True))
    generate(model, prompt, 3, Sampling(greedy=True), use_cache=False)
    hook.remove()
    assert fed == [5, 1, 1, 5, 6, 7]
    # The cache is the model's own: its length grows by what it was fed.
    cache = model.new_cache()
    model(prompt, cache=cache)
    assert cache.get_seq_length() == 5
    with pytest.raises(ValueError, match="exceed block_size 64"):
        generate(model, prompt, 60)


def test_sequence_level_kd_from_an_hf_teacher_keeps_its_greedy_continuations(folder):
    model = create(f"hf:{folder}", num_classes=TOKENS, causal_lm=True)
    prompts = torch.randint(0, TOKENS, (6, 4), generator=torch.Generator().manual_seed(1))
    ids, _, labels = sequence_kd_set(FrozenTeacher(model), prompts, 16)
    assert ids.shape == labels.shape == (6, 16) and torch.equal(ids[:, :4], prompts)
    with torch.no_grad():
        greedy = model.eval()(ids).argmax(-1)
    scored = labels != -100
    assert int(scored.sum()) == 6 * 12 and torch.equal(greedy[scored], labels[scored])


@pytest.mark.parametrize("mode", ["on_policy", "sequence", "topk_cache", "hidden_states"])
def test_the_other_distillation_modes_run_with_hf_models(folder, small_folder, text_file, tmp_path, mode):
    raw = cfg(folder, text_file, teacher_epochs=0).model_dump(mode="json")
    raw["student"]["model"] = {"name": f"hf:{small_folder}"}
    if mode == "topk_cache":  # the teacher's 8 likeliest next tokens of every position, on disk
        raw["distill"].update(teacher_outputs="cache", cache={"topk": 8})
    elif mode == "hidden_states":  # the last GPT-2 blocks, widths 16 and 32: a per-token adapter
        block = {"student": "transformer.h.-1", "teacher": "transformer.h.-1"}
        raw["distill"] = {
            "terms": [{"loss": "forward_kl", "weight": 1.0}, {"loss": "fitnet", "weight": 1.0, **block}]
        }
    else:
        raw["distill"]["lm"] = {
            "mode": mode,
            "prompt_len": 8,
            **({"lambda_": 1.0} if mode == "on_policy" else {}),
        }
    models = run_experiment(ExperimentConfig.model_validate(raw), tmp_path / "run")["models"]
    kd = models["student_kd"]
    assert kd["steps"] > 0 and 1 < kd["perplexity"] < 1000
    if mode == "topk_cache":
        assert kd["lm_mode"]["mode"] == "supervised" and kd["lm_mode"]["cache"]["k"] == 8
    elif mode == "hidden_states":
        records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
        assert any(r["phase"] == "student_kd" and r.get("loss.fitnet", 0) > 0 for r in records)
    else:
        assert kd["lm_mode"]["mode"] == mode


def test_an_hf_teacher_is_fine_tuned_on_its_own_tokenizer_distilled_and_read_back(
    folder, text_file, tmp_path, capsys
):
    config = cfg(folder, text_file)
    assert config.data.lm.tokenizer == f"hf:{folder}"  # the teacher's tokenizer tokenises the data
    before = run_experiment(cfg(folder, text_file, teacher_epochs=0), tmp_path / "as-is")["models"]["teacher"]
    summary = run_experiment(config, tmp_path / "run")
    models, run = summary["models"], tmp_path / "run"
    assert list(models) == ["teacher", "student_scratch", "student_kd"]
    # The untrained tiny GPT-2 is about uniform over the 300 tokens; one epoch of fine-tuning is far below it.
    assert 200 < before["perplexity"] < 400 and models["teacher"]["perplexity"] < before["perplexity"] / 4
    assert models["student_kd"]["perplexity"] < 300
    # The fine-tuned teacher is a kdkit checkpoint with the tokenizer beside it: eval and generate read it.
    model, tok, meta = load_lm(run / "checkpoints" / "teacher")
    assert isinstance(model, HFCausalLM) and meta["model"]["name"] == f"hf:{folder}"
    assert tok.get_vocab() == bpe(lm_text()).get_vocab()
    capsys.readouterr()
    assert main(["eval", str(run / "checkpoints" / "teacher")]) == 0
    ev = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert ev["perplexity"] == pytest.approx(models["teacher"]["perplexity"], rel=1e-4)
    assert main(["generate", str(run / "checkpoints" / "teacher"), "--prompt", "the king",
                 "--max-new-tokens", "5", "--seed", "0"]) == 0  # fmt: skip
    assert capsys.readouterr().out.startswith("the king")
    # kdkit export-hf: the fine-tuned teacher as a Hugging Face folder that transformers loads on its own.
    out = tmp_path / "exported"
    assert main(["export-hf", str(run / "checkpoints" / "teacher"), str(out)]) == 0
    exported = transformers.AutoModelForCausalLM.from_pretrained(out, use_safetensors=True).eval()
    ids = torch.randint(0, TOKENS, (2, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(exported(input_ids=ids).logits[..., :TOKENS], model.eval()(ids))
    assert transformers.AutoTokenizer.from_pretrained(out).get_vocab() == tok.get_vocab()
    before = sorted(p.name for p in out.iterdir())
    capsys.readouterr()
    assert main(["export-hf", str(run / "checkpoints" / "teacher"), str(out)]) == 2  # nothing is overwritten
    assert "exists and is not an empty folder" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == before and not list(tmp_path.glob(".exported.partial-*"))
    assert main(["export-hf", str(run / "checkpoints" / "student_kd"), str(tmp_path / "gpt")]) == 2
    assert "only hf: models export to a Hugging Face folder" in capsys.readouterr().err
    assert not (tmp_path / "gpt").exists()
    # teacher.checkpoint: the fine-tuned teacher teaches another run without training again.
    raw = cfg(folder, text_file).model_dump(mode="json")
    raw["teacher"]["checkpoint"] = str(run / "checkpoints" / "teacher")
    reused = run_experiment(ExperimentConfig.model_validate(raw), tmp_path / "reused")["models"]["teacher"]
    assert reused["loaded_from"] == raw["teacher"]["checkpoint"]
    assert reused["perplexity"] == pytest.approx(models["teacher"]["perplexity"], rel=1e-4)


def test_a_data_tokenizer_other_than_the_hf_teachers_is_refused_before_anything_trains(
    folder, text_file, tmp_path
):
    other = tmp_path / "other.json"
    bpe(lm_text().upper()).save(str(other))  # 300 tokens too, other merges
    with pytest.raises(KdkitError, match=r"tokenizers differ: 300 tokens against 300; id \d+ is"):
        run_experiment(cfg(folder, text_file, tokenizer=str(other)), tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_an_hf_student_of_the_same_tokenizer_is_distilled_from_an_hf_teacher(
    folder, small_folder, text_file, tmp_path
):
    raw = cfg(folder, text_file).model_dump(mode="json")
    raw["student"]["model"] = {"name": f"hf:{small_folder}"}
    summary = run_experiment(ExperimentConfig.model_validate(raw), tmp_path / "run")
    models = summary["models"]
    assert list(models) == ["teacher", "student_scratch", "student_kd"]
    assert models["student_kd"]["params"] < models["teacher"]["params"] / 2
    for rec in models.values():
        assert 1 < rec["perplexity"] < 150  # trained: the untrained models are about uniform over 300 tokens
    model, _, meta = load_lm(tmp_path / "run" / "checkpoints" / "student_kd")
    assert isinstance(model, HFCausalLM) and meta["model"]["name"] == f"hf:{small_folder}"


@pytest.fixture(scope="module")
def reference(folder, text_file, tmp_path_factory):
    """(directory, config file) of a command-line run, its reference run finished in `ref`."""
    d = tmp_path_factory.mktemp("hf-lm-processes")
    raw = cfg(folder, text_file, teacher_epochs=2).model_dump(mode="json")
    raw["runtime"].update(progress=False, tensorboard=False, threads=1, checkpoint_every_steps=4)
    cfg_file = d / "cfg.yaml"
    cfg_file.write_text(yaml.safe_dump(raw))
    ref = _kdkit(cfg_file, d / "ref")
    assert ref.returncode == 0, ref.stderr[-3000:]
    return d, cfg_file


def test_an_hf_teacher_killed_while_fine_tuning_resumes_bit_identically(reference):
    tmp_path, cfg_file = reference
    steps = json.loads((tmp_path / "ref" / "summary.json").read_text())["models"]["teacher"]["steps"]
    assert steps >= 12  # a state every 4 steps: the kill below falls inside the phase, past a saved state
    killed = _kdkit(cfg_file, tmp_path / "run", fault=f"step:{steps - 3}")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert not (tmp_path / "run" / "checkpoints" / "teacher.json").exists()
    done = _kdkit(cfg_file, tmp_path / "run", "--resume")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "[teacher] resumed at epoch" in done.stderr
    # GPT-2 trains with dropout (0.1): the same weights need the same random draws after the resume too.
    for role in ("teacher", "student_kd"):
        a = load_file(str(tmp_path / "ref" / "checkpoints" / f"{role}.safetensors"))
        b = load_file(str(tmp_path / "run" / "checkpoints" / f"{role}.safetensors"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), role


def test_two_ranks_match_one_process_with_an_hf_teacher(reference):
    d, cfg_file = reference
    two = _kdkit(cfg_file, d / "two", "--nproc", "2")
    assert two.returncode == 0, two.stderr[-3000:]
    one = json.loads((d / "ref" / "summary.json").read_text())["models"]
    both = json.loads((d / "two" / "summary.json").read_text())["models"]
    for role in ("teacher", "student_scratch", "student_kd"):
        assert one[role]["steps"] == both[role]["steps"] and one[role]["test_size"] == both[role]["test_size"]
        assert abs(one[role]["perplexity"] - both[role]["perplexity"]) <= 0.02 * one[role]["perplexity"], role
