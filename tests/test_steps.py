"""Step providers, batches as mappings and the token loader: what the task-agnostic engine is built on."""

import re
from pathlib import Path

import pytest
import torch

import kdkit.engine
from kdkit.batches import BatchLoader
from kdkit.cohort import Cohort
from kdkit.config import TrainConfig
from kdkit.data.loader import Batch, InMemoryLoader
from kdkit.data.tokens import TokenLoader
from kdkit.engine import Engine
from kdkit.errors import KdkitError, ModelError
from kdkit.losses import response
from kdkit.models import create
from kdkit.objective import Objective, Term
from kdkit.resume import CheckpointPolicy
from kdkit.runtime import resolve_runtime
from kdkit.steps import (
    CohortStep,
    ServedTeacherStep,
    StudentStep,
    TeacherStep,
    default_steps,
    for_teacher,
    missing_inputs,
)
from kdkit.teacher import FrozenTeacher


def _images(n=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 255, (n, 1, 4, 4), generator=g).to(torch.uint8), torch.randint(
        0, 3, (n,), generator=g
    )


def _mlp(seed=0):
    torch.manual_seed(seed)
    return create("mlp", num_classes=3, in_channels=1, image_size=4, hidden=[8])


def _engine():
    return Engine(resolve_runtime("fp32"), progress=False, log_every=1000)


def test_an_image_batch_is_a_mapping_of_named_tensors_with_its_old_attributes():
    x, y = _images(10)
    loader = InMemoryLoader(x, y, 4, extras={"teacher.logits": torch.randn(10, 3)})
    batch = next(iter(loader))
    assert isinstance(batch, Batch) and isinstance(loader, BatchLoader)
    assert list(batch) == ["images", "labels", "index", "teacher.logits"] and len(batch) == 4
    assert batch["images"] is batch.x and batch["labels"] is batch.y and batch["index"] is batch.index
    assert batch["teacher.logits"] is batch.extras["teacher.logits"] and "student.logits" not in batch
    assert loader.batch_keys() == frozenset(batch)
    assert torch.equal(dict(batch)["labels"], y[:4])


def _token_data(n=10, length=6):
    g = torch.Generator().manual_seed(1)
    lengths = torch.tensor([2, 6, 3, 4, 1, 5, 2, 3, 6, 4])[:n]
    mask = (torch.arange(length)[None] < lengths[:, None]).long()
    ids = torch.randint(1, 20, (n, length), generator=g) * mask
    return ids, mask, torch.arange(n) % 3


def test_token_loader_shuffles_per_epoch_resumes_mid_epoch_shards_and_trims():
    ids, mask, labels = _token_data()
    loader = TokenLoader(ids, mask, labels, 4, shuffle=True, seed=7)
    assert isinstance(loader, BatchLoader) and len(loader) == 3
    assert loader.batch_keys() == {"input_ids", "attention_mask", "labels", "index"}
    epoch0 = [b["index"] for b in loader]
    assert sorted(torch.cat(epoch0).tolist()) == list(range(10))
    loader.set_epoch(1)
    epoch1 = [b["index"] for b in loader]
    assert not torch.equal(torch.cat(epoch0), torch.cat(epoch1))
    loader.set_epoch(1, start_batch=1)
    assert [b["index"].tolist() for b in loader] == [t.tolist() for t in epoch1[1:]]
    loader.set_epoch(1)
    ranks = [list(loader.shard(r, 2)) for r in range(2)]
    for b, (r0, r1) in enumerate(zip(*ranks, strict=True)):
        assert sorted(r0["index"].tolist() + r1["index"].tolist()) == sorted(epoch1[b].tolist())
    for batch in TokenLoader(ids, mask, labels, 4):
        width = int(mask[batch["index"]].sum(dim=1).max())
        assert batch["input_ids"].shape == (len(batch["index"]), width)
        assert torch.equal(batch["input_ids"], ids[batch["index"], :width])
    untrimmed = next(iter(TokenLoader(ids, mask, labels, 4, trim=False)))
    assert untrimmed["input_ids"].shape == (4, 6)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"input_ids": torch.zeros(4, 3)}, "input_ids must be an integer"),
        ({"attention_mask": torch.ones(4, 2, dtype=torch.long)}, "attention_mask has shape"),
        ({"labels": torch.zeros(3, dtype=torch.long)}, "labels have shape"),
        ({"attention_mask": torch.tensor([[0, 1, 1]] * 4)}, "right-padded"),
    ],
)
def test_token_loader_refuses_malformed_input_naming_the_field(kwargs, message):
    args = {
        "input_ids": torch.ones(4, 3, dtype=torch.long),
        "attention_mask": torch.ones(4, 3, dtype=torch.long),
        "labels": torch.zeros(4, dtype=torch.long),
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        TokenLoader(args["input_ids"], args["attention_mask"], args["labels"], 2)


def test_the_provider_for_a_phase_follows_the_teacher_the_loader_and_the_model():
    teacher = FrozenTeacher(_mlp(1))
    assert type(for_teacher(None)) is StudentStep
    assert type(for_teacher(teacher)) is TeacherStep
    served = for_teacher(teacher, {"images", "labels", "index", "teacher.logits"})
    assert type(served) is ServedTeacherStep and served.keys == ("teacher.logits",)
    cohort = Cohort({"a": _mlp(1), "b": _mlp(2)}, "b")
    step = default_steps(cohort, None)
    assert type(step) is CohortStep and {"a.logits", "b.logits"} <= step.provides()
    assert step.eval_models(cohort) == {"a": cohort.members["a"], "b": cohort}
    with pytest.raises(KdkitError, match="no separate teacher"):
        default_steps(cohort, teacher)


def test_missing_inputs_understand_module_path_wildcards():
    obj = Objective(
        [
            Term.from_name("kd"),
            Term("hint", response.logit_mse, ("student:features.fc1", "teacher:features.fc1")),
            Term("peer", response.kd, ("student.logits", "peer.logits")),
        ]
    )
    assert missing_inputs(obj, StudentStep().provides()) == [
        "teacher.logits",
        "teacher:features.fc1",
        "peer.logits",
    ]
    assert missing_inputs(obj, TeacherStep(_mlp()).provides()) == ["peer.logits"]


def test_fit_refuses_an_objective_whose_tensors_no_provider_supplies_before_any_step(monkeypatch):
    x, y = _images()
    steps_run = []
    monkeypatch.setattr("kdkit.engine.faults.hit", steps_run.append)
    loader = InMemoryLoader(x, y, 16)
    cfg = TrainConfig(epochs=1)
    with pytest.raises(KdkitError, match="reads teacher outputs but no teacher was given"):
        _engine().fit("s", _mlp(), Objective.response("kd"), loader, cfg)
    feats = Objective([Term("f", response.logit_mse, ("student:features.fc1", "teacher:features.fc1"))])
    with pytest.raises(KdkitError, match="reads teacher features but no teacher was given"):
        _engine().fit("s", _mlp(), feats, loader, cfg)
    peers = Objective([Term("p", response.kd, ("student.logits", "peer.logits"))])
    with pytest.raises(KdkitError, match=r"reads \['peer.logits'\], which this phase does not provide"):
        _engine().fit("s", _mlp(), peers, loader, cfg, steps=StudentStep())
    with pytest.raises(KdkitError, match="either teacher= or steps="):
        _engine().fit("s", _mlp(), peers, loader, cfg, teacher=_mlp(1), steps=StudentStep())
    cohort = Cohort({"a": _mlp(1), "b": _mlp(2)}, "b")
    with pytest.raises(KdkitError, match="another model"):
        _engine().fit("s", _mlp(), Objective.hard_labels(), loader, cfg, steps=CohortStep(cohort))
    assert steps_run == []


class _PositionTeacher(torch.nn.Module):
    """A teacher that varies by step: it records every position its provider tells it."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.seen, self.position = inner, [], None

    def set_position(self, epoch, batch):
        self.position = (epoch, batch)

    def forward(self, x):
        self.seen.append(self.position)
        with torch.no_grad():
            return self.inner(x)


def test_teacher_step_tells_a_varying_teacher_each_steps_position_also_after_resume(tmp_path, monkeypatch):
    x, y = _images()
    cfg = TrainConfig(epochs=2)
    teacher = _PositionTeacher(_mlp(1).eval())
    _engine().fit("s", _mlp(), Objective.response("kd"), InMemoryLoader(x, y, 16), cfg, teacher=teacher)
    assert teacher.seen == [(e, b) for e in range(2) for b in range(3)]

    class Killed(Exception):
        pass

    def hit(point):
        if point == "step" and len(teacher.seen) == 5:
            raise Killed

    teacher.seen.clear()
    monkeypatch.setattr("kdkit.engine.faults.hit", hit)
    policy = CheckpointPolicy(tmp_path, every_steps=1)
    with pytest.raises(Killed):
        _engine().fit(
            "s",
            _mlp(),
            Objective.response("kd"),
            InMemoryLoader(x, y, 16),
            cfg,
            teacher=teacher,
            checkpoint=policy,
        )
    monkeypatch.setattr("kdkit.engine.faults.hit", lambda point: None)
    teacher.seen.clear()
    policy.resume = True
    _engine().fit(
        "s",
        _mlp(),
        Objective.response("kd"),
        InMemoryLoader(x, y, 16),
        cfg,
        teacher=teacher,
        checkpoint=policy,
    )
    assert teacher.seen == [(1, 1), (1, 2)]  # the state of step 4 resumes at epoch 1, batch 1


def test_the_engine_knows_no_strategy_teacher_or_hook_class():
    source = Path(kdkit.engine.__file__).read_text()
    assert not re.search(r"\b(Cohort|FrozenTeacher|EnsembleTeacher|Tap)\b", source)


def test_a_bad_teacher_path_fails_fit_with_the_valid_paths_and_leaves_no_hook_behind():
    x, y = _images()
    student, teacher = _mlp(), _mlp(1)
    obj = Objective([Term("f", response.logit_mse, ("student:features.fc1", "teacher:features.nope"))])
    with pytest.raises(ModelError, match=r"teacher \(MLP\) has no module 'features.nope'"):
        _engine().fit("s", student, obj, InMemoryLoader(x, y, 16), TrainConfig(epochs=1), teacher=teacher)
    assert all(not m._forward_hooks for m in (*student.modules(), *teacher.modules()))
