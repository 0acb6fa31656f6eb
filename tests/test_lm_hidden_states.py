"""Hidden-state distillation of language models: `distill.terms` reading module outputs (fitnet between transformer
blocks, a per-token linear adapter when the widths differ) beside the per-token divergences, on a teacher-forced
step with the teacher online; the modes that cannot tap the teacher refuse such terms before anything trains."""

import json

import pytest
from test_lm_run import lm_cfg, lm_text

from kdkit.config import ExperimentConfig
from kdkit.errors import KdkitError
from kdkit.experiment import run_experiment

HIDDEN = {"loss": "fitnet", "weight": 1.0, "student": "blocks.-1", "teacher": "blocks.-1"}


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("lm-hidden") / "input.txt"
    path.write_text(lm_text())
    return path


def cfg(text_file, terms, epochs=2, **distill):
    raw = lm_cfg(text_file).model_dump(mode="json")
    for role in ("teacher", "student"):
        raw[role]["train"]["epochs"] = epochs
    raw["distill"] = {"terms": terms, **distill}
    return ExperimentConfig.model_validate(raw)


def _epoch_records(run_dir, phase):
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if r["phase"] == phase and "val_loss" in r]


def test_a_fitnet_term_between_blocks_trains_beside_the_token_divergence(text_file, tmp_path):
    terms = [{"loss": "ce", "weight": 0.5}, {"loss": "forward_kl", "weight": 0.5}, HIDDEN]
    summary = run_experiment(cfg(text_file, terms), tmp_path / "run")
    kd = summary["models"]["student_kd"]
    assert 1 < kd["perplexity"] < 300 and kd["lm_mode"] == {"mode": "supervised"}
    epochs = _epoch_records(tmp_path / "run", "student_kd")
    assert len(epochs) == 2 and all({"loss.ce", "loss.forward_kl", "loss.fitnet"} <= set(r) for r in epochs)
    # The student's last block (width 16) is pulled, through its adapter, towards the teacher's (width 32).
    assert 0 < epochs[1]["loss.fitnet"] < epochs[0]["loss.fitnet"]


@pytest.mark.parametrize(
    ("terms", "distill", "message"),
    [
        (
            [HIDDEN],
            {"lm": {"mode": "on_policy", "prompt_len": 8}},
            "teacher-forced step with the teacher online",
        ),
        (
            [HIDDEN],
            {"lm": {"mode": "sequence", "prompt_len": 8}},
            "teacher-forced step with the teacher online",
        ),
        ([{**HIDDEN, "student": "blocks.7"}], {}, "blocks.7"),
        (
            [{"loss": "factor_transfer", "weight": 1.0, "student": "blocks.-1", "teacher": "blocks.-1"}],
            {},
            "paraphraser",
        ),
    ],
)
def test_what_cannot_tap_both_models_is_refused_before_training(text_file, tmp_path, terms, distill, message):
    with pytest.raises(KdkitError, match=message):
        run_experiment(cfg(text_file, terms, **distill), tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()
