"""Exact resume for conv nets: channels_last weights, batch norm and augmentation (issue 28).

Checkpoints store contiguous tensors; a channels_last conv weight's optimizer state used to come back in
NCHW, the update then ran another elementwise kernel and the resumed run drifted in the last bit.
"""

import hashlib
import os
import signal
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file
from torch import nn

from kdkit.checkpoint import load_checkpoint, save_checkpoint
from kdkit.resume import load_optimizer_state, optimizer_state

CFG = {
    "name": "resume-conv",
    "data": {"dataset": "mnist-small", "val_size": 500, "train_limit": 4000},
    "teacher": {  # batch norm + augmentation + channels_last (the runtime default)
        "model": {"name": "cnn", "channels": [8, 16]},
        "train": {"epochs": 3, "batch_size": 100, "lr": 0.05, "augment": {"jitter": 2}},
    },
    "student": {
        "model": {"name": "cnn", "channels": [4, 8], "batch_norm": False},
        "train": {"epochs": 3, "batch_size": 100, "lr": 0.05},
    },
    "distill": {"temperature": 4.0},
    "runtime": {"progress": False, "tensorboard": False, "checkpoint_every_steps": 7, "log_every": 5},
}
ROLES = ("teacher", "student_scratch", "student_kd")


def _kdkit(args, fault=None):
    env = {k: v for k, v in os.environ.items() if k != "KDKIT_FAULT"}
    if fault:
        env["KDKIT_FAULT"] = fault
    return subprocess.run(
        [sys.executable, "-m", "kdkit", *args], capture_output=True, text=True, env=env, timeout=300
    )


def _weights(run_dir):
    h = hashlib.sha256()
    for role in ROLES:
        tensors = load_file(str(run_dir / "checkpoints" / f"{role}.safetensors"))
        for k in sorted(tensors):
            h.update(k.encode() + tensors[k].reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run: its config and the hash of its three models' weights."""
    d = tmp_path_factory.mktemp("conv-ref")
    cfg = d / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(CFG))
    ref = _kdkit(["run", str(cfg), "--run-dir", str(d / "ref")])
    assert ref.returncode == 0, ref.stderr[-2000:]
    return cfg, _weights(d / "ref")


def test_conv_net_with_batch_norm_killed_at_three_points_resumes_bit_identically(reference, tmp_path):
    cfg, ref_weights = reference
    run = tmp_path / "run"
    base = ["run", str(cfg), "--run-dir", str(run)]
    # 35 steps an epoch, 105 a phase, a state every 7 steps: killed at teacher step 30 (epoch 1), resumed
    # from 28 and killed at 43 (epoch 2), resumed from 42 and killed at distillation step 22
    for i, fault in enumerate(("step:30", "step:15", "step:190")):
        p = _kdkit([*base, "--resume"] if i else base, fault)
        assert p.returncode == -signal.SIGKILL, p.stderr[-2000:]
    assert (run / "checkpoints" / "student_scratch.json").exists()
    done = _kdkit([*base, "--resume"])
    assert done.returncode == 0, done.stderr[-2000:]
    assert _weights(run) == ref_weights


def _conv_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 3))
    return model.to(memory_format=torch.channels_last)


def _step(model, opt, x):
    opt.zero_grad()
    model(x).square().mean().backward()
    opt.step()


@pytest.mark.parametrize(
    "make_opt",
    [
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=5e-4),
        lambda p: torch.optim.AdamW(p, lr=1e-2),
    ],
    ids=["sgd", "adamw"],
)
def test_restored_optimizer_state_takes_each_parameters_layout_and_the_next_step_is_identical(
    make_opt, tmp_path
):
    x = torch.randn(4, 3, 12, 12).to(memory_format=torch.channels_last)
    model = _conv_model()
    opt = make_opt(model.parameters())
    _step(model, opt, x)
    tensors, meta = optimizer_state(opt)
    assert any(not t.is_contiguous() for t in tensors.values())  # channels_last momentum / moments
    save_checkpoint(tmp_path / "opt", tensors, {"optimizer": meta})
    tensors, saved = load_checkpoint(tmp_path / "opt")
    assert all(t.is_contiguous() for t in tensors.values())  # what a checkpoint gives back

    twin = _conv_model()
    twin.load_state_dict(model.state_dict())
    twin_opt = make_opt(twin.parameters())
    load_optimizer_state(twin_opt, tensors, saved["optimizer"])
    for param, st in twin_opt.state.items():
        for value in st.values():
            if isinstance(value, torch.Tensor) and value.shape == param.shape:
                assert value.stride() == param.stride()
    for _ in range(3):
        _step(model, opt, x)
        _step(twin, twin_opt, x)
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.equal(a, b)


def test_conv_net_stopped_by_ctrl_c_resumes_bit_identically(reference, tmp_path):
    cfg, ref_weights = reference
    run = tmp_path / "run"
    stopped = _kdkit(["run", str(cfg), "--run-dir", str(run)], "step:52:SIGINT")  # mid teacher epoch 2
    assert stopped.returncode == 130 and "stopped by signal 2" in stopped.stderr, stopped.stderr[-2000:]
    done = _kdkit(["run", str(cfg), "--run-dir", str(run), "--resume"])
    assert done.returncode == 0 and "resumed at epoch 2, batch 17" in done.stderr, done.stderr[-2000:]
    assert _weights(run) == ref_weights
