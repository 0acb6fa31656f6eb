"""Every shipped config validates, and every method config's objective builds and back-propagates."""

from pathlib import Path

import pytest
import torch

from kdkit.config import load_config
from kdkit.experiment import build_model
from kdkit.losses import Objective
from kdkit.taps import Tap
from kdkit.terms import build_objective

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").rglob("*.yaml")) + [ROOT / "src/kdkit/configs/quickstart.yaml"]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(ROOT)))
def test_config_validates(path):
    cfg = load_config(path)
    assert cfg.phases


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "cifar10").glob("*.yaml")), ids=lambda p: p.stem)
def test_method_objective_builds_and_trains_the_student(path):
    cfg = load_config(path)
    torch.manual_seed(0)
    student = build_model(cfg.student.model, 10, 3, 32, "student.model")
    teacher = build_model(cfg.teacher.model, 10, 3, 32, "teacher.model").eval()
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    obj: Objective = build_objective(cfg.distill.terms, student, teacher, x[:8], y[:8], n_data=16)
    obj.epoch = 25.0  # past every warm-up
    with Tap(student, obj.student_paths()) as st, Tap(teacher, obj.teacher_paths()) as tt:
        logits = student(x)
        with torch.no_grad():
            t_logits = teacher(x)
        tensors = {
            "student.logits": logits,
            "teacher.logits": t_logits,
            "labels": y,
            "index": torch.arange(16),
            **{f"student:{k}": v for k, v in st.outputs.items()},
            **{f"teacher:{k}": v for k, v in tt.outputs.items()},
        }
        total, parts = obj(tensors)
    assert torch.isfinite(total) and len(parts) == len(cfg.distill.terms)
    total.backward()
    assert student.conv1.weight.grad is not None and student.conv1.weight.grad.abs().sum() > 0
