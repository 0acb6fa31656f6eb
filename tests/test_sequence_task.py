"""The engine on token data: a GRU teacher and a distilled GRU student through the same Engine.fit as images,
teacher taps on a GRU, exact resume, and per-token evaluation with an ignore index."""

import math

import pytest
import torch

from kdkit.checkpoint import load_checkpoint
from kdkit.config import TrainConfig
from kdkit.data.tokens import TokenLoader
from kdkit.engine import Engine
from kdkit.models import GRUClassifier
from kdkit.objective import Objective, Term
from kdkit.resume import CheckpointPolicy, list_states
from kdkit.runtime import resolve_runtime
from kdkit.steps import StudentStep
from kdkit.tasks import ClassificationTask
from kdkit.teacher import FrozenTeacher

VOCAB, LENGTH, CLASSES = 50, 12, 3
TOKENS = ClassificationTask(input_keys=("input_ids", "attention_mask"))
CFG = TrainConfig(epochs=3, lr=0.01, optimizer="adamw", weight_decay=0.0, batch_size=32)


def _tokens(n, seed):
    """Return (input_ids, attention_mask, labels): the label is the class whose marker token (1, 2 or 3)
    occurs most often; 2-3 copies of it and one fewer of another marker sit among random tokens 4..49, in
    sequences of 5-12 tokens right-padded with 0."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, CLASSES, (n,), generator=g)
    lengths = torch.randint(5, LENGTH + 1, (n,), generator=g)
    ids = torch.randint(CLASSES + 1, VOCAB, (n, LENGTH), generator=g)
    for i in range(n):
        c, length = int(labels[i]), int(lengths[i])
        k = int(torch.randint(2, 4, (1,), generator=g))
        other = (c + 1 + int(torch.randint(0, CLASSES - 1, (1,), generator=g))) % CLASSES
        marks = torch.tensor([1 + c] * k + [1 + other] * (k - 1))
        ids[i, torch.randperm(length, generator=g)[: len(marks)]] = marks
        ids[i, length:] = 0
    mask = (torch.arange(LENGTH)[None] < lengths[:, None]).long()
    return ids, mask, labels


TRAIN, TEST = _tokens(480, 0), _tokens(300, 1)


def _engine():
    return Engine(resolve_runtime("fp32"), progress=False, log_every=1000)


def _train_loader(seed=1):
    return TokenLoader(*TRAIN, CFG.batch_size, shuffle=True, seed=seed)


def _student(seed=1):
    torch.manual_seed(seed)
    return GRUClassifier(VOCAB, CLASSES, embed_dim=16, hidden=16)


def _kd_objective():
    """KD + CE, and a hint term that reads the teacher's GRU output through a tap (via a 16->32 adapter)."""
    obj = Objective.response("kd", alpha=0.9, beta=0.1, temperature=4.0)
    hint = Term("hint", torch.nn.functional.mse_loss, ("student:rnn", "teacher:rnn"), 0.1, adapter="proj")
    torch.manual_seed(2)
    return Objective([*obj.terms, hint], {"proj": torch.nn.Linear(16, 32)})


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(0)
    model = GRUClassifier(VOCAB, CLASSES, embed_dim=32, hidden=32)
    fit = _engine().fit("teacher", model, Objective.hard_labels(), _train_loader(), CFG, task=TOKENS)
    return fit.model


def _predictions(model):
    logits = _engine().predict_logits(model, TokenLoader(*TEST, 100), TOKENS)
    return logits.argmax(dim=1)


def test_teacher_learns_the_token_rule_through_engine_fit(teacher):
    res = _engine().evaluate(teacher, TokenLoader(*TEST, 64), CLASSES, task=TOKENS)
    assert res.total == 300
    assert res.accuracy > 0.8, res.accuracy  # chance is 1/3
    assert res.class_counts.tolist() == torch.bincount(TEST[2], minlength=CLASSES).tolist()
    assert res.correct == int((_predictions(teacher) == TEST[2]).sum())


def test_student_distills_from_the_teacher_with_a_tap_on_its_gru(teacher):
    fit = _engine().fit(
        "student",
        _student(),
        _kd_objective(),
        _train_loader(2),
        CFG,
        task=TOKENS,
        teacher=FrozenTeacher(teacher),
    )
    hint = [rec["loss.hint"] for rec in fit.history]
    assert all(math.isfinite(h) and h > 0 for h in hint) and hint[-1] < hint[0], hint  # the tap fed the term
    acc = _engine().evaluate(fit.model, TokenLoader(*TEST, 64), CLASSES, task=TOKENS).accuracy
    agreement = float((_predictions(fit.model) == _predictions(teacher)).float().mean())
    assert acc > 0.7, acc
    assert agreement > 0.7, agreement


def test_interrupted_distillation_resumes_bit_identically(teacher, tmp_path, monkeypatch):
    def run(directory, resume=False):
        return _engine().fit(
            "student",
            _student(),
            _kd_objective(),
            _train_loader(2),
            CFG.model_copy(update={"epochs": 2}),
            task=TOKENS,
            teacher=FrozenTeacher(teacher),
            checkpoint=CheckpointPolicy(directory, every_steps=5, resume=resume),
        )

    reference = run(tmp_path / "ref")

    class Killed(Exception):
        pass

    hits = {"n": 0}

    def hit(point):
        hits["n"] += point == "step"
        if hits["n"] == 23:  # epoch 2 of 2 (15 steps each), 3 steps after the state of step 20
            raise Killed

    monkeypatch.setattr("kdkit.engine.faults.hit", hit)
    with pytest.raises(Killed):
        run(tmp_path / "run")
    assert [s for s, _ in list_states(tmp_path / "run", "student")][-1] == 20
    monkeypatch.setattr("kdkit.engine.faults.hit", lambda point: None)
    resumed = run(tmp_path / "run", resume=True)
    assert resumed.steps == reference.steps == 30
    ref_state, res_state = reference.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(ref_state[k], res_state[k]) for k in ref_state)
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in reference.history]


class _FixedLogits(torch.nn.Module):
    """A 'model' that returns given per-token logits for the sample indices it is called with."""

    def __init__(self, logits):
        super().__init__()
        self.table = logits

    def forward(self, index):
        return self.table[index]


def _per_token_case():
    g = torch.Generator().manual_seed(3)
    n, length, c = 7, 5, 4
    logits = torch.randn(n, length, c, generator=g) * 2
    labels = torch.randint(0, c, (n, length), generator=g)
    labels[torch.rand(n, length, generator=g) < 0.3] = -100
    labels[:, -1] = -100  # the last position is never scored (no next token)
    ids = torch.randint(1, VOCAB, (n, length), generator=g)
    return logits, labels, ids


def test_per_token_evaluation_scores_only_tokens_that_are_not_ignored():
    logits, labels, ids = _per_token_case()
    loader = TokenLoader(ids, torch.ones_like(ids), labels, 3, trim=False)
    res = _engine().evaluate(_FixedLogits(logits), loader, 4, task=ClassificationTask(input_keys=("index",)))
    # By hand: over scored tokens only, accuracy of the argmax and the mean negative log-likelihood.
    nll, right, scored = 0.0, 0, 0
    counts = [0] * 4
    for i in range(logits.shape[0]):
        for t in range(logits.shape[1]):
            y = int(labels[i, t])
            if y == -100:
                continue
            row = [float(v) for v in logits[i, t]]
            log_z = math.log(sum(math.exp(v) for v in row))
            nll += log_z - row[y]
            right += int(max(range(4), key=lambda k: row[k]) == y)
            scored += 1
            counts[y] += 1
    assert scored < labels.numel() and res.total == scored and res.correct == right
    assert res.accuracy == pytest.approx(right / scored)
    assert res.loss == pytest.approx(nll / scored, rel=1e-6)
    assert res.perplexity == pytest.approx(math.exp(nll / scored), rel=1e-6)
    assert res.class_counts.tolist() == counts


def test_per_token_training_counts_train_accuracy_over_scored_tokens_and_resumes(tmp_path, monkeypatch):
    """A per-token model: train accuracy is a share of scored tokens (not of sequences), and a state saved
    mid-epoch keeps that count (`sums.counted`), so the resumed phase logs what the uninterrupted one did."""
    _, labels, ids = _per_token_case()
    ids, labels = ids.repeat(8, 1), labels.repeat(8, 1)  # 56 sequences of 5 tokens
    mask = torch.ones_like(ids)

    def run(directory, lr=0.05, epochs=2, resume=False):
        torch.manual_seed(0)
        model = GRUClassifier(VOCAB, 4, embed_dim=8, hidden=8, per_token=True)
        loader = TokenLoader(ids, mask, labels, 8, shuffle=True, seed=4, trim=False)
        cfg = TrainConfig(epochs=epochs, lr=lr, optimizer="sgd", momentum=0.9)
        return _engine().fit(
            "lm",
            model,
            Objective.hard_labels(),
            loader,
            cfg,
            task=TOKENS,
            steps=StudentStep(),
            checkpoint=CheckpointPolicy(directory, every_steps=3, keep=10, resume=resume),
        )

    # At lr 1e-30 the fp32 weights do not move: the epoch's train accuracy is the model's accuracy on scored tokens.
    frozen = run(tmp_path / "frozen", lr=1e-30, epochs=1)
    torch.manual_seed(0)
    initial = GRUClassifier(VOCAB, 4, embed_dim=8, hidden=8, per_token=True).state_dict()
    assert all(torch.equal(v, frozen.model.state_dict()[k]) for k, v in initial.items())
    with torch.no_grad():
        preds = frozen.model.eval()(ids, mask).argmax(dim=-1)
    scored = labels != -100
    right = int(((preds == labels) & scored).sum())
    assert frozen.history[0]["train_accuracy"] == pytest.approx(right / int(scored.sum()))
    assert right / int(scored.sum()) != pytest.approx(right / len(ids))  # a share of sequences would differ

    reference = run(tmp_path / "ref")

    class Killed(Exception):
        pass

    hits = {"n": 0}

    def hit(point):
        hits["n"] += point == "step"
        if hits["n"] == 11:  # epoch 2 (7 steps each), 2 steps after the state of step 9
            raise Killed

    monkeypatch.setattr("kdkit.engine.faults.hit", hit)
    with pytest.raises(Killed):
        run(tmp_path / "run")
    tensors, meta = load_checkpoint(list_states(tmp_path / "run", "lm")[-1][1])
    assert (meta["step"], meta["batch"], meta["seen"]) == (9, 2, 16)
    order = TokenLoader(ids, mask, labels, 8, shuffle=True, seed=4, trim=False)
    order.set_epoch(1)
    first_two_batches = order.order()[:16]
    assert int(tensors["sums.counted"]) == int(scored[first_two_batches].sum()) != 16  # tokens, not sequences
    monkeypatch.setattr("kdkit.engine.faults.hit", lambda point: None)
    resumed = run(tmp_path / "run", resume=True)

    def timeless(history):
        return [{k: v for k, v in rec.items() if k != "elapsed_seconds"} for rec in history]

    assert timeless(resumed.history) == timeless(reference.history)
    ref_state, res_state = reference.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(ref_state[k], res_state[k]) for k in ref_state)
