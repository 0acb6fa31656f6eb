"""Language-model text through the whole run (issue 32's command line): data.dataset text:PATH with data.lm,
teacher -> scratch -> distilled GPT students through plan/preflight/executor, per-token losses as distill.loss
or distill.terms, perplexity in the records and the table, tokenizers saved with the run and the checkpoints."""

import json
import random

import pytest
import torch

from kdkit.cli import main
from kdkit.config import DataConfig, ExperimentConfig
from kdkit.data.bundle import load_data, make_loader
from kdkit.data.lm_text import IGNORE_INDEX, save_tokenizer, train_tokenizer
from kdkit.errors import KdkitError
from kdkit.experiment import run_experiment
from kdkit.lm_io import load_lm
from kdkit.tasks import TOKEN_CLASSIFICATION

WORDS = [
    "the",
    "king",
    "and",
    "queen",
    "of",
    "rome",
    "shall",
    "speak",
    "to",
    "thee",
    "my",
    "lord",
    "good",
    "night",
    "sweet",
    "prince",
]


def lm_text(n_lines=600, seed=0):
    """A small text of random lines of a 16-word vocabulary (learnable: the word set is small)."""
    rng = random.Random(seed)
    return (
        "\n".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12))) for _ in range(n_lines))
        + "\n"
    )


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("lm-run") / "input.txt"
    path.write_text(lm_text())
    return path


def lm_cfg(text_file, **over):
    train = {"epochs": 1, "batch_size": 16, "optimizer": "adamw", "lr": 3e-3, "schedule": "constant"}
    raw = {
        "name": "tiny-lm",
        "seed": 0,
        "data": {"dataset": f"text:{text_file}", "lm": {"vocab_size": 300, "block_size": 32}},
        "teacher": {"model": {"name": "gpt", "n_layers": 2, "d_model": 32, "n_heads": 2, "block_size": 32},
                    "train": train},
        "student": {"model": {"name": "gpt", "n_layers": 1, "d_model": 16, "n_heads": 2, "block_size": 32},
                    "train": train},
        "distill": {"loss": "forward_kl", "temperature": 1.0, "alpha": 0.5, "beta": 0.5},
        "runtime": {"eval_batch_size": 32, "precision": "fp32"},
    }  # fmt: skip
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    return ExperimentConfig.model_validate(raw)


def test_text_is_split_by_position_into_blocks_of_next_token_labels(text_file):
    cfg = lm_cfg(text_file)
    b = load_data(cfg.data, 0)
    assert b.is_lm and not b.is_text and b.task == TOKEN_CLASSIFICATION
    assert b.num_classes == b.in_channels == b.vocab_size == len(b.train.classes) <= 300
    assert b.image_size == 32 and b.lm["block_size"] == 32 and b.lm["split"] == [0.9, 0.05, 0.05]
    tokens = b.lm["tokens"]
    assert tokens["train"] > 15 * (tokens["val"] + tokens["test"]) / 2  # 90% against 5% and 5%
    x = b.train.input_ids
    # Labels are the next tokens: inside a block, label i is input i + 1; across blocks the stream continues.
    assert torch.equal(b.train.labels[:-1, :-1], x[:-1, 1:]) and torch.equal(
        b.train.labels[:-1, -1], x[1:, 0]
    )
    assert (b.train.labels[-1] == IGNORE_INDEX).any() or b.train.attention_mask.all()
    batch = next(iter(make_loader(b.train, b, 8, train=True, seed=0)))
    assert batch["input_ids"].shape == batch["labels"].shape == (8, 32)
    # tinyshakespeare is a named text under the data root; a missing one says where it was looked for.
    with pytest.raises(KdkitError, match="tinyshakespeare"):
        load_data(DataConfig(dataset="tinyshakespeare", root=str(text_file.parent)), 0)


def test_teacher_scratch_and_distilled_gpt_students_run_end_to_end(text_file, tmp_path, capsys):
    summary = run_experiment(lm_cfg(text_file), tmp_path / "run")
    models = summary["models"]
    assert list(models) == ["teacher", "student_scratch", "student_kd"]
    for rec in models.values():
        assert rec["perplexity"] == pytest.approx(torch.tensor(rec["test_loss"]).exp().item(), rel=1e-6)
        assert 1 < rec["perplexity"] < 300 and 0 < rec["accuracy"] < 1 and rec["val_perplexity"] > 1
        assert "errors_per_class" not in rec
    out = "".join(capsys.readouterr())
    assert "test ppl" in out and "token acc" in out
    run = tmp_path / "run"
    assert (run / "tokenizer.json").is_file()
    # Every checkpoint is a language model with its tokenizer beside it: kdkit generate reads it.
    model, tok, meta = load_lm(run / "checkpoints" / "student_kd")
    assert meta["lm"]["tokenizer_sha"] == summary_sha(run) and model.vocab_size == tok.get_vocab_size()
    assert main(["generate", str(run / "checkpoints" / "student_kd"), "--prompt", "the king",
                 "--max-new-tokens", "5", "--seed", "0"]) == 0  # fmt: skip
    assert capsys.readouterr().out.startswith("the king")
    # kdkit eval: the perplexity of a run's GPT checkpoint on the run's test split (its own tokenizer).
    for role, rec in models.items():
        assert main(["eval", str(run / "checkpoints" / role)]) == 0
        ev = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert ev["split"] == "test" and ev["total"] == rec["tokens_tested"]
        assert ev["perplexity"] == pytest.approx(rec["perplexity"], rel=1e-4)
        assert ev["accuracy"] == pytest.approx(rec["accuracy"])
    assert main(["eval", str(run / "checkpoints" / "teacher"), "--split", "val"]) == 0
    ev = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert ev["perplexity"] == pytest.approx(models["teacher"]["val_perplexity"], rel=1e-4)


def summary_sha(run):
    from kdkit.data.lm_text import load_tokenizer, tokenizer_hash

    return tokenizer_hash(load_tokenizer(run / "tokenizer.json"))


@pytest.mark.parametrize("loss", ["reverse_kl", "gkd_jsd", "total_variation"])
def test_each_token_divergence_is_a_distill_loss(text_file, loss):
    cfg = lm_cfg(text_file, distill={"loss": loss, "alpha": 1.0, "beta": 0.0})
    from kdkit.preflight import preflight

    plan = preflight(cfg, load_data(cfg.data, 0))
    assert loss in plan.phases[-1].objective.describe()


def test_token_terms_in_distill_terms_train(text_file, tmp_path):
    cfg = lm_cfg(
        text_file,
        phases=["teacher", "distill"],
        distill={
            "terms": [
                {"loss": "gkd_jsd", "weight": 0.7, "options": {"beta": 0.5}},
                {"loss": "ce", "weight": 0.3},
            ]
        },
    )
    rec = run_experiment(cfg, tmp_path / "terms")["models"]["student_kd"]
    assert rec["perplexity"] > 1 and rec["teacher_outputs"] == "online"


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"distill": {"loss": "kd"}}, "per-token loss"),
        ({"distill": {"teacher_outputs": "precompute"}}, "online"),
        ({"student": {"model": {"name": "gpt", "n_layers": 1, "d_model": 16, "n_heads": 2, "block_size": 16}}},
         "block_size 16"),
        ({"student": {"model": {"name": "mlp"}}}, "not a language model"),
        ({"strategy": {"kind": "mutual"}}, "not supported on language-model text"),
    ],
)  # fmt: skip
def test_preflight_refuses_what_language_models_cannot_do(text_file, over, message):
    cfg = lm_cfg(text_file, **over)
    with pytest.raises(KdkitError, match=message):
        run_experiment(cfg, None)


def test_a_teacher_of_another_vocabulary_is_refused_before_training(text_file, tmp_path):
    run_experiment(lm_cfg(text_file, phases=["teacher"]), tmp_path / "t")
    teacher = tmp_path / "t" / "checkpoints" / "teacher"
    # The same vocabulary size, other tokens: a tokenizer trained on other text.
    other = save_tokenizer(train_tokenizer(lm_text(seed=1).upper(), 300), tmp_path / "other.json")
    cfg = lm_cfg(
        text_file,
        phases=["teacher", "distill"],
        data={"dataset": f"text:{text_file}", "lm": {"tokenizer": str(other), "block_size": 32}},
        teacher={"checkpoint": str(teacher)},
    )
    with pytest.raises(KdkitError, match="tokenizers differ: .* id "):
        run_experiment(cfg, tmp_path / "refused")
    assert not (tmp_path / "refused").exists()


def test_lm_data_settings_are_checked_with_the_config(text_file):
    with pytest.raises(ValueError, match="does not apply to language-model text"):
        DataConfig(dataset=f"text:{text_file}", test_size=0.1)
    with pytest.raises(ValueError, match="data.lm is for language-model text"):
        DataConfig(dataset="mnist-small", lm={})
    with pytest.raises(ValueError, match="split"):
        DataConfig(dataset=f"text:{text_file}", lm={"split": [0.5, 0.2, 0.2]})


def test_the_shakespeare_config_validates_and_documents_its_sizes():
    from pathlib import Path

    from kdkit.config import load_config

    cfg = load_config(Path(__file__).parent.parent / "configs" / "lm" / "shakespeare.yaml")
    assert cfg.data.dataset == "tinyshakespeare" and cfg.distill.loss == "forward_kl"
    assert (cfg.teacher.model.options()["n_layers"], cfg.teacher.model.options()["d_model"]) == (4, 256)
    assert (cfg.student.model.options()["n_layers"], cfg.student.model.options()["d_model"]) == (2, 128)
    assert json.dumps(cfg.data.lm.model_dump(mode="json"))


@pytest.mark.parametrize(
    ("lm", "distill"),
    [
        (
            {"mode": "on_policy", "lambda_": 0.5, "prompt_len": 8},
            {"loss": "gkd_jsd", "alpha": 1.0, "beta": 0.0},
        ),
        ({"mode": "sequence", "prompt_len": 8}, {"loss": "forward_kl", "alpha": 0.0, "beta": 1.0}),
    ],
)
def test_on_policy_and_sequence_level_modes_run_as_config_options(text_file, tmp_path, capsys, lm, distill):
    cfg = lm_cfg(text_file, phases=["teacher", "distill"], distill={**distill, "lm": lm})
    rec = run_experiment(cfg, tmp_path / lm["mode"])["models"]["student_kd"]
    assert rec["lm_mode"]["mode"] == lm["mode"] and rec["perplexity"] > 1
    if lm["mode"] == "sequence":
        # The teacher's continuations of every unpadded block's first 8 tokens are the transfer set.
        assert "sequence-level KD: the teacher continued" in "".join(capsys.readouterr())
        assert rec["transfer_size"] >= load_data(cfg.data, 0).train.input_ids.shape[0] - 1


def test_distill_lm_options_are_checked_with_the_config(text_file):
    with pytest.raises(ValueError, match="prompt_len 32 leaves nothing"):
        lm_cfg(text_file, distill={"lm": {"mode": "on_policy", "prompt_len": 32}})
    with pytest.raises(ValueError, match="distill.lm is for language-model text"):
        lm_cfg(text_file, data={"dataset": "mnist-small", "lm": None}, distill={"lm": {"mode": "sequence"}})


def test_on_policy_with_lambda_0_is_the_supervised_run_and_lambda_1_is_not(text_file, tmp_path):
    def student(lm):
        cfg = lm_cfg(text_file, phases=["teacher", "distill"], distill={"loss": "gkd_jsd", "lm": lm})
        return run_experiment(cfg, tmp_path / str(len(list(tmp_path.iterdir()))))["models"]["student_kd"]

    supervised = student({"mode": "supervised"})
    assert student({"mode": "on_policy", "lambda_": 0.0})["perplexity"] == supervised["perplexity"]
    assert student({"mode": "on_policy", "lambda_": 1.0})["perplexity"] != supervised["perplexity"]


def test_the_sparse_top_k_teacher_cache_serves_distill_loss(text_file, tmp_path, capsys):
    def run(name, **distill):
        cfg = lm_cfg(text_file, phases=["teacher", "distill"], distill=distill)
        return run_experiment(cfg, tmp_path / name)["models"]["student_kd"]

    cache = {"topk": 8, "dir": str(tmp_path / "cache")}
    first = run("first", teacher_outputs="cache", cache=cache)
    assert first["teacher_outputs"] == "cache" and first["lm_mode"]["cache"]["built"]
    assert (
        first["lm_mode"]["cache"]["bytes_per_token"] == 8 * (2 + 2) + 2
    )  # int16 ids, fp16 log-probs and tail
    again = run("again", teacher_outputs="cache", cache=cache)  # the same teacher (seeded): read, not built
    assert not again["lm_mode"]["cache"]["built"] and again["perplexity"] == first["perplexity"]
    # k = the vocabulary: the sparse targets are the dense ones (an empty tail), so training matches online.
    full = run("full", teacher_outputs="cache", cache={**cache, "topk": 10_000})
    online = run("online", teacher_outputs="online")
    assert full["perplexity"] == pytest.approx(online["perplexity"], rel=2e-3)
    with pytest.raises(KdkitError, match="set distill.cache.topk"):
        run("no-k", teacher_outputs="cache")
    with pytest.raises(KdkitError, match="supervised mode only"):
        run("policy", teacher_outputs="cache", cache=cache, lm={"mode": "on_policy"})
