"""Reliability: exact resume after kill -9 (three points, one inside a checkpoint write), graceful stop."""

import hashlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from safetensors.torch import load_file

from kdkit.cli import main
from kdkit.config import TrainConfig
from kdkit.data.loader import InMemoryLoader
from kdkit.engine import Engine
from kdkit.models import create
from kdkit.objective import Objective, Term
from kdkit.runtime import resolve_runtime
from kdkit.signals import STOP, graceful_stop

CFG = {
    "name": "resume",
    "data": {"dataset": "mnist-small", "val_size": 500, "train_limit": 3000},
    "teacher": {
        "model": {"name": "mlp", "hidden": [64], "dropout": 0.2},
        "train": {"epochs": 2, "batch_size": 100, "lr": 0.1, "augment": {"jitter": 2}},
    },
    "student": {
        "model": {"name": "mlp", "hidden": [32]},
        "train": {"epochs": 2, "batch_size": 100, "lr": 0.05},
    },
    "distill": {"temperature": 4.0},
    "runtime": {"progress": False, "tensorboard": False, "checkpoint_every_steps": 7, "log_every": 5},
}
ROLES = ("teacher", "student_scratch", "student_kd")


def _kdkit(args, env_extra=None, timeout=300):
    env = {k: v for k, v in os.environ.items() if k != "KDKIT_FAULT"}
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, "-m", "kdkit", *args], capture_output=True, text=True, env=env, timeout=timeout
    )


def _weights_hash(run_dir):
    h = hashlib.sha256()
    for role in ROLES:
        tensors = load_file(str(run_dir / "checkpoints" / f"{role}.safetensors"))
        for k in sorted(tensors):
            h.update(k.encode())
            h.update(tensors[k].contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    d = tmp_path_factory.mktemp("ref")
    cfg = d / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(CFG))
    proc = _kdkit(["run", str(cfg), "--run-dir", str(d / "run")])
    assert proc.returncode == 0, proc.stderr[-2000:]
    return cfg, d / "run", _weights_hash(d / "run")


def test_kill_9_at_three_points_then_resume_is_bit_identical(reference, tmp_path):
    cfg, ref_run, ref_hash = reference
    run = tmp_path / "run"
    base = ["run", str(cfg), "--run-dir", str(run)]
    # 1) killed mid-epoch in the teacher phase (step 30 of 50; last checkpoint at step 28)
    p1 = _kdkit(base, {"KDKIT_FAULT": "step:30"})
    assert p1.returncode == -signal.SIGKILL
    # 2) resumed, then killed inside a checkpoint write (temporary file written, not yet renamed)
    p2 = _kdkit([*base, "--resume"], {"KDKIT_FAULT": "checkpoint-write:9"})
    assert p2.returncode == -signal.SIGKILL and "resumed at epoch 2" in p2.stderr
    assert list((run / "checkpoints").glob(".*.tmp"))  # the torn write is there...
    # 3) resumed again, killed in the distillation phase
    p3 = _kdkit([*base, "--resume"], {"KDKIT_FAULT": "step:40"})
    assert p3.returncode == -signal.SIGKILL
    assert (run / "checkpoints" / "student_scratch.json").exists() and not (run / "summary.json").exists()
    # 4) the final resume completes, skipping the finished phases
    p4 = _kdkit([*base, "--resume"])
    assert p4.returncode == 0, p4.stderr[-2000:]
    assert "finished earlier" in p4.stderr
    assert _weights_hash(run) == ref_hash
    ours = json.loads((run / "summary.json").read_text())["models"]
    theirs = json.loads((ref_run / "summary.json").read_text())["models"]
    assert {r: ours[r]["errors"] for r in ROLES} == {r: theirs[r]["errors"] for r in ROLES}
    # keep-last-N: never more than 2 training states per phase
    for role in ROLES:
        assert len(list((run / "checkpoints").glob(f"{role}-state-*.json"))) <= 2


def test_sigint_finishes_the_step_checkpoints_and_prints_the_resume_command(reference, tmp_path):
    cfg, _, ref_hash = reference
    run = tmp_path / "run"
    env = {**os.environ}
    env.pop("KDKIT_FAULT", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "kdkit", "run", str(cfg), "--run-dir", str(run)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    metrics = run / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline:  # wait until training is under way
        if metrics.exists() and '"student_scratch"' in metrics.read_text():
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "stopped by signal 2" in err and "resume with:" in err
    cmd = err.split("resume with:")[1].strip().splitlines()[0]
    args = shlex.split(cmd)
    assert args[0] == "kdkit" and args[-1] == "--resume" and "--run-dir" in args
    again = _kdkit(args[1:])
    assert again.returncode == 0, again.stderr[-2000:]
    assert _weights_hash(run) == ref_hash


def test_second_signal_exits_at_once(monkeypatch):
    exits = []
    monkeypatch.setattr(os, "_exit", lambda code: exits.append(code))
    with graceful_stop():
        handler = signal.getsignal(signal.SIGTERM)
        handler(signal.SIGTERM, None)
        assert STOP.requested and not exits
        handler(signal.SIGTERM, None)
        assert exits == [128 + signal.SIGTERM]
    assert signal.getsignal(signal.SIGTERM) is not handler  # handlers restored afterwards
    STOP.clear()


def test_resume_refuses_missing_run_and_changed_config(reference, tmp_path, capsys):
    cfg, ref_run, _ = reference
    assert main(["run", str(cfg), "--run-dir", str(tmp_path / "empty"), "--resume"]) == 2
    assert "nothing to resume" in capsys.readouterr().err
    assert (
        main(["run", str(cfg), "--run-dir", str(ref_run), "--resume", "--set", "distill.temperature=9"]) == 2
    )
    assert "differs" in capsys.readouterr().err


def test_skip_non_finite_batches_counts_them():
    x = torch.randint(0, 255, (64, 1, 4, 4), dtype=torch.uint8)
    y = torch.randint(0, 3, (64,))
    calls = []

    def sometimes_nan(logits):
        calls.append(1)
        return logits.sum() * (float("nan") if len(calls) in (2, 5) else 0.0)

    obj = Objective([Term.from_name("ce"), Term("flaky", sometimes_nan, ("student.logits",))])
    m = create("mlp", num_classes=3, in_channels=1, image_size=4, hidden=[8])
    eng = Engine(resolve_runtime("fp32"), progress=False)
    res = eng.fit("s", m, obj, InMemoryLoader(x, y, 8), TrainConfig(epochs=1, on_nonfinite="skip"))
    assert res.history[-1]["skipped_batches"] == 2
    assert all(torch.isfinite(p).all() for p in res.model.parameters())


def test_teacher_checkpoint_with_other_classes_is_refused_before_training(tmp_path, capsys):
    from kdkit.checkpoint import save_checkpoint

    t = create("mlp", num_classes=5, in_channels=1, image_size=28, hidden=[16])
    meta = {
        "kind": "model",
        "model": {"name": "mlp", "hidden": [16]},
        "num_classes": 5,
        "in_channels": 1,
        "image_size": 28,
        "classes": list("abcde"),
        "normalize": {"mean": [0.1], "std": [0.3]},
    }
    save_checkpoint(tmp_path / "t5", t.state_dict(), meta)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(CFG))
    code = main(
        ["distill", str(cfg), "--teacher", str(tmp_path / "t5.safetensors"), "--run-dir", str(tmp_path / "r")]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "predicts 5 classes" in err and "mnist-small has 10" in err
    assert not (tmp_path / "r").exists()  # refused before the run directory was made: nothing trained
