"""A language-model run killed mid-phase resumes bit-identically (KDKIT_FAULT), and 2 data-parallel ranks (gloo,
loopback) give the figures of 1 process, as for images (tests/test_resume_conv.py, tests/test_distributed.py)."""

import hashlib
import json
import os
import signal
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file
from test_lm_run import lm_text

ROLES = ("teacher", "student_scratch", "student_kd")
TRAIN = {"epochs": 2, "batch_size": 16, "optimizer": "adamw", "lr": 3e-3, "schedule": "cosine"}


def _cfg(text_file):
    return {
        "name": "lm-resume",
        "data": {"dataset": f"text:{text_file}", "lm": {"vocab_size": 300, "block_size": 32}},
        "teacher": {"model": {"name": "gpt", "n_layers": 2, "d_model": 32, "n_heads": 2, "block_size": 32},
                    "train": TRAIN},
        "student": {"model": {"name": "gpt", "n_layers": 1, "d_model": 16, "n_heads": 2, "block_size": 32,
                              "dropout": 0.1}, "train": TRAIN},
        "distill": {"loss": "gkd_jsd", "temperature": 1.0, "alpha": 0.5, "beta": 0.5},
        "runtime": {"progress": False, "tensorboard": False, "threads": 1, "precision": "fp32",
                    "checkpoint_every_steps": 4, "eval_batch_size": 32},
    }  # fmt: skip


ENV = {
    **{k: v for k, v in os.environ.items() if not k.startswith("KDKIT_FAULT")},
    "OMP_NUM_THREADS": "1",
    "MASTER_ADDR": "127.0.0.1",
    "GLOO_SOCKET_IFNAME": "lo",
}


def _kdkit(cfg, run_dir, *extra, fault=None):
    env = {**ENV, **({"KDKIT_FAULT": fault} if fault else {})}
    cmd = [sys.executable, "-m", "kdkit", "run", str(cfg), "--run-dir", str(run_dir), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


def _weights(run_dir):
    h = hashlib.sha256()
    for role in ROLES:
        tensors = load_file(str(run_dir / "checkpoints" / f"{role}.safetensors"))
        for k in sorted(tensors):
            h.update(k.encode() + tensors[k].reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _epochs(run_dir, phase):
    recs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in recs if r["phase"] == phase and "train_accuracy" in r and "lr" not in r]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("lm-resume-ddp")
    text = d / "input.txt"
    text.write_text(lm_text())
    cfg = d / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(_cfg(text)))
    ref = _kdkit(cfg, d / "ref")
    assert ref.returncode == 0, ref.stderr[-3000:]
    return d, cfg


def test_a_language_model_run_killed_in_three_phases_resumes_bit_identically(setup):
    d, cfg = setup
    steps = json.loads((d / "ref" / "summary.json").read_text())["models"]["teacher"]["steps"]
    assert steps == 32  # 16 steps an epoch, a training state every 4 steps
    run = d / "run"
    # Each process counts steps from where it resumed (the newest state, every 4 steps): killed at teacher step
    # 22 (epoch 2); resumed from 20, killed at scratch step 22 (12 + 22 hits); resumed from 20, killed at
    # distillation step 23 (12 + 23 hits), resumed from 20 (epoch 2, batch 4; teacher online, dropout in the student).
    kills = (22, 12 + 22, 12 + 23)
    for i, n in enumerate(kills):
        p = _kdkit(cfg, run, *(["--resume"] if i else []), fault=f"step:{n}")
        assert p.returncode == -signal.SIGKILL, p.stderr[-3000:]
    assert (run / "checkpoints" / "student_scratch.json").exists()
    assert not (run / "checkpoints" / "student_kd.json").exists()
    done = _kdkit(cfg, run, "--resume")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "[student_kd] resumed at epoch 2, batch 4, step 20" in done.stderr
    assert _weights(run) == _weights(d / "ref")
    a = json.loads((run / "summary.json").read_text())["models"]
    b = json.loads((d / "ref" / "summary.json").read_text())["models"]
    assert all(a[r]["perplexity"] == b[r]["perplexity"] for r in ROLES)


def test_two_ranks_match_one_process_on_a_language_model(setup):
    d, cfg = setup
    two = _kdkit(cfg, d / "two", "--nproc", "2")
    assert two.returncode == 0, two.stderr[-3000:]
    s1 = json.loads((d / "ref" / "summary.json").read_text())["models"]
    s2 = json.loads((d / "two" / "summary.json").read_text())["models"]
    for role in ROLES:
        assert s1[role]["steps"] == s2[role]["steps"]  # the same global batches
        assert s2[role]["test_size"] == s1[role]["test_size"]  # tokens counted across both ranks, exactly
        assert abs(s1[role]["accuracy"] - s2[role]["accuracy"]) <= 0.005, (role, s1[role], s2[role])
        assert abs(s1[role]["perplexity"] - s2[role]["perplexity"]) <= 0.02 * s1[role]["perplexity"]
        l1 = [r["loss"] for r in _epochs(d / "ref", role)]
        l2 = [r["loss"] for r in _epochs(d / "two", role)]
        assert len(l1) == len(l2) == 2
        assert all(abs(a - b) <= 0.02 * a + 1e-3 for a, b in zip(l1, l2)), (role, l1, l2)
    assert len(list((d / "two").glob("metrics*.jsonl"))) == 1
