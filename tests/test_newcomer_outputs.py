"""Outputs a user expects from a run (issue 28): class names, confusion matrix, top-5, console log, test
metrics in TensorBoard and one epoch numbering in metrics.jsonl."""

import json
import struct

import pytest
import torch
import yaml
from tensorboardX.proto import event_pb2
from torch import nn

from kdkit.cli import main
from kdkit.data.tokens import TokenLoader
from kdkit.tasks import ClassificationTask

CFG = {
    "name": "outputs",
    "data": {"dataset": "mnist-small", "val_size": 300, "train_limit": 1500},
    "teacher": {"model": {"name": "mlp", "hidden": [32]}, "train": {"epochs": 2, "batch_size": 100}},
    "student": {"model": {"name": "mlp", "hidden": [16]}, "train": {"epochs": 2, "batch_size": 100}},
    "runtime": {"progress": False, "tensorboard": True, "log_every": 5},
}
ROLES = ("teacher", "student_scratch", "student_kd")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("outputs")
    (d / "cfg.yaml").write_text(yaml.safe_dump(CFG))
    assert main(["run", str(d / "cfg.yaml"), "--run-dir", str(d / "run")]) == 0
    return d / "run"


def test_summary_names_the_classes_beside_their_errors_with_a_confusion_matrix_and_top5(run):
    models = json.loads((run / "summary.json").read_text())["models"]
    for role in ROLES:
        rec = models[role]
        assert rec["classes"] == [str(i) for i in range(10)]  # the names of MNIST's classes
        assert len(rec["errors_per_class"]) == len(rec["classes"])
        cm = torch.tensor(rec["confusion_matrix"])
        assert cm.shape == (10, 10) and int(cm.sum()) == rec["test_size"]
        assert rec["test_size"] - int(cm.diag().sum()) == rec["errors"]
        assert (cm.sum(1) - cm.diag()).tolist() == rec["errors_per_class"]
        assert rec["accuracy"] <= rec["top5_accuracy"] <= 1.0


def test_top5_is_left_out_with_five_classes_or_fewer_and_counts_only_scored_tokens():
    torch.manual_seed(0)
    ids = torch.randint(0, 5, (12, 4))
    labels = ids.clone()
    labels[:, -1] = -100  # unscored tokens enter neither the confusion matrix nor top-5
    loader = TokenLoader(ids, torch.ones_like(ids), labels, 4)
    task = ClassificationTask(input_keys=("input_ids",))
    echo = nn.Embedding(5, 5)
    with torch.no_grad():
        echo.weight.copy_(torch.eye(5))
    result = task.evaluate(echo, loader, 5, torch.device("cpu"))
    assert result.top5_accuracy is None and result.accuracy == 1.0 and result.total == 36
    assert torch.equal(result.confusion, torch.diag(torch.bincount(ids[:, :3].reshape(-1), minlength=5)))
    wide = nn.Embedding(5, 8)  # 8 logits: top-5 is reported
    result = task.evaluate(wide, loader, 8, torch.device("cpu"))
    assert result.top5_accuracy is not None and result.accuracy <= result.top5_accuracy


def test_console_log_holds_what_the_console_printed_without_colour(run):
    log = (run / "console.log").read_text()
    assert "[teacher] epoch 2/2" in log and "[student_kd] epoch 1/2" in log
    assert "student (distilled)" in log  # the final table
    assert "\x1b[" not in log


def test_metrics_jsonl_counts_epochs_from_one_in_step_and_epoch_records(run):
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for role in ROLES:
        mine = [r for r in records if r["phase"] == role]
        steps = [r for r in mine if "lr" in r]
        ends = [r for r in mine if "elapsed_seconds" in r]
        assert [r["epoch"] for r in ends] == [1, 2]
        assert steps and {r["epoch"] for r in steps} == {1, 2}
        for r in steps:  # a step record carries the epoch of the first epoch record at or after its step
            assert r["epoch"] == next(e["epoch"] for e in ends if e["step"] >= r["step"])
        (evaluated,) = [r for r in mine if r.get("event") == "evaluated"]
        assert 0 < evaluated["test_accuracy"] <= 1 and evaluated["step"] == ends[-1]["step"]


def _scalars(tb_dir):
    found = {}
    for path in tb_dir.rglob("events.out.tfevents.*"):
        data = path.read_bytes()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos : pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12 : pos + 12 + length])
            pos += 12 + length + 4
            for value in event.summary.value:
                found.setdefault(value.tag, []).append((event.step, value.simple_value))
    return found


def test_tensorboard_holds_each_models_test_accuracy(run):
    scalars = _scalars(run / "tb")
    summary = json.loads((run / "summary.json").read_text())["models"]
    for role in ROLES:
        ((_, acc),) = scalars[f"{role}/test_accuracy"]
        assert acc == pytest.approx(summary[role]["accuracy"], abs=1e-6)
        assert f"{role}/loss" in scalars
