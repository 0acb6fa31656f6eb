"""A loaded checkpoint's evaluation is remembered: the same weights on the same samples are evaluated once."""

from __future__ import annotations

import json

import pytest
import torch

from kdkit.config import build_config
from kdkit.engine import Engine
from kdkit.eval_memo import memo_key, recall, remember
from kdkit.experiment import run_experiment
from kdkit.tasks import EvalResult

BASE = {
    "name": "memo",
    "data": {"dataset": "mnist-small", "val_size": 500, "train_limit": 2000, "test_limit": 600},
    "teacher": {"model": {"name": "mlp", "hidden": [64]}, "train": {"epochs": 1, "batch_size": 128}},
    "student": {"model": {"name": "mlp", "hidden": [16]}, "train": {"epochs": 1, "batch_size": 128}},
    "runtime": {"progress": False},
}


@pytest.fixture
def counted(monkeypatch):
    """Count Engine.evaluate calls by the number of samples evaluated."""
    calls: list[int] = []
    real = Engine.evaluate

    def counting(self, model, loader, *args, **kwargs):
        result = real(self, model, loader, *args, **kwargs)
        calls.append(result.total)
        return result

    monkeypatch.setattr(Engine, "evaluate", counting)
    return calls


def test_a_loaded_teacher_is_evaluated_once_then_read_back(tmp_path, monkeypatch, counted):
    monkeypatch.setenv("KDKIT_CACHE", str(tmp_path / "cache"))
    run_experiment(build_config({**BASE, "phases": ["teacher"]}), tmp_path / "teacher")
    ckpt = str(tmp_path / "teacher" / "checkpoints" / "teacher")
    counted.clear()

    def scratch(name: str, **data: object) -> dict:
        raw = {
            **BASE,
            "data": {**BASE["data"], **data},
            "phases": ["scratch"],
            "teacher": {**BASE["teacher"], "checkpoint": ckpt},
        }
        return run_experiment(build_config(raw), tmp_path / name)["models"]

    first = scratch("first")
    assert counted == [500, 600, 500, 600]  # teacher val + test, then the student's
    memos = sorted((tmp_path / "cache" / "evaluations").glob("*.json"))
    assert len(memos) == 2
    counted.clear()
    second = scratch("second")
    assert counted == [500, 600]  # only the student: the teacher's two evaluations were read back
    assert second["teacher"] == first["teacher"]  # accuracy, errors per class, confusion, loss: all of it
    assert first["teacher"]["accuracy"] > 0.5 and len(first["teacher"]["confusion_matrix"]) == 10

    # Other test samples are another key: evaluated again, and the result differs from the 600-image one.
    counted.clear()
    other = scratch("other", test_limit=400)
    assert counted == [400, 500, 400]  # the teacher's test (its val, the same 500, read back), the student's
    assert other["teacher"]["val_accuracy"] == first["teacher"]["val_accuracy"]
    assert other["teacher"]["test_size"] == 400 and first["teacher"]["test_size"] == 600

    # A damaged memo is not trusted: the teacher is evaluated again and the file written whole.
    for m in memos:
        m.write_text('{"format": "kdkit-eval-memo-1", "correct": 3')
    counted.clear()
    again = scratch("again")
    assert counted == [500, 600, 500, 600]
    assert again["teacher"] == first["teacher"]
    assert all(json.loads(m.read_text())["total"] in (500, 600) for m in memos)


def _result(correct: int, counts: list[int], errors: list[int]) -> EvalResult:
    return EvalResult(
        correct=correct,
        total=sum(counts),
        loss=0.123456789012345,
        class_counts=torch.tensor(counts),
        class_errors=torch.tensor(errors),
        confusion=None,
        top5_correct=None,
    )


def test_memo_round_trip_is_exact_and_inconsistent_files_are_refused(tmp_path):
    r = _result(7, [5, 5], [1, 2])
    remember(tmp_path, "k", r)
    back = recall(tmp_path, "k")
    assert back is not None
    assert (back.correct, back.total, back.loss) == (7, 10, 0.123456789012345)
    assert back.class_counts.tolist() == [5, 5] and back.class_errors.tolist() == [1, 2]
    assert recall(tmp_path, "missing") is None
    doc = json.loads((tmp_path / "k.json").read_text())
    (tmp_path / "k.json").write_text(json.dumps({**doc, "correct": 9}))  # errors no longer add up
    assert recall(tmp_path, "k") is None
    (tmp_path / "k.json").write_text(json.dumps({**doc, "format": "other"}))
    assert recall(tmp_path, "k") is None


def test_the_key_follows_weights_spec_samples_and_classes():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    batches = [{"images": torch.rand(4, 1, 4, 4), "labels": torch.tensor([0, 1, 2, 0])}]
    spec = {"name": "mlp", "hidden": [8]}

    def key(**over: object) -> str:
        args = {"model": model, "spec": spec, "loader": batches, "num_classes": 3, "task": "images"}
        args.update(over)
        return memo_key(args["model"], args["spec"], args["loader"], args["num_classes"], args["task"], False)

    base = key()
    assert base == key()  # deterministic
    assert key(spec={**spec, "input_size": 224}) != base  # same weights, another forward
    assert key(num_classes=4) != base
    assert key(task="tokens") != base
    assert key(loader=[{**batches[0], "labels": torch.tensor([0, 1, 2, 1])}]) != base
    with torch.no_grad():
        next(model.parameters())[0, 0] += 1e-6
    assert key() != base
