"""Causal-LM distillation end to end through Engine.fit: a tiny GPT teacher trained on BPE-tokenized text, a
student distilled with the token divergences (teacher online, teacher-forced), and the sparse teacher cache:
k = V gives the dense loss, the key refuses another teacher, and the bytes per token follow the format."""

import pytest
import torch

from kdkit.batches import stable_seed
from kdkit.config import TrainConfig
from kdkit.data.lm_text import block_loader, blocks, prepare_text
from kdkit.data.tokens import TokenLoader
from kdkit.engine import Engine
from kdkit.errors import CheckpointError, ModelError
from kdkit.generation import generate
from kdkit.lm_cache import (
    SPARSE_KEYS,
    SparseTeacherCache,
    bytes_per_token,
    cache_key,
    id_dtype,
    sparse_steps,
    sparse_term,
)
from kdkit.lm_modes import LMTeacherStep, OnPolicyStep, continuation_labels, sequence_kd_set
from kdkit.losses import SparseTargets, forward_kl
from kdkit.losses import generalized_jsd as L_jsd
from kdkit.models import GPT
from kdkit.objective import Objective, Term
from kdkit.resume import CheckpointPolicy
from kdkit.runtime import resolve_runtime
from kdkit.steps import StepPosition, StepRuntime
from kdkit.tasks import ClassificationTask
from kdkit.teacher import FrozenTeacher

TOKENS = ClassificationTask(input_keys=("input_ids", "attention_mask"))
BLOCK = 32
WORDS = ["the", "cat", "sat", "on", "a", "mat", "while", "dog", "ran", "after", "red", "ball", "and", "slept"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models gain nothing from intra-op threads, and on a shared 2-core machine they lose a lot."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _engine():
    return Engine(resolve_runtime("fp32"), progress=False, log_every=1000)


def _text(lines=800, seed=0):
    """Sentences from a small grammar: subject, verb, object, so that a model has something to learn."""
    g = torch.Generator().manual_seed(seed)
    subjects, verbs, objects = (
        ["the cat", "a dog", "the red ball"],
        ["sat on", "ran after", "slept by"],
        WORDS,
    )
    out = []
    for _ in range(lines):
        s, v = (
            subjects[int(torch.randint(0, 3, (1,), generator=g))],
            verbs[int(torch.randint(0, 3, (1,), generator=g))],
        )
        o = " ".join(objects[int(i)] for i in torch.randint(0, len(objects), (2,), generator=g))
        out.append(f"{s} {v} {o}.\n")
    return "".join(out)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("lm") / "text.txt"
    path.write_text(_text(), encoding="utf-8")
    return prepare_text(path, vocab_size=300)


@pytest.fixture(scope="module")
def teacher(data):
    torch.manual_seed(0)
    model = GPT(data.vocab_size, 2, 48, 4, BLOCK)
    cfg = TrainConfig(epochs=4, lr=3e-3, optimizer="adamw", batch_size=16, schedule="constant")
    loader = block_loader(data.train, BLOCK, 16, shuffle=True, seed=0)
    fit = _engine().fit("teacher", model, Objective.hard_labels(), loader, cfg, task=TOKENS)
    return fit.model.eval()


def _student(vocab, seed=1):
    torch.manual_seed(seed)
    return GPT(vocab, 1, 32, 4, BLOCK)


CFG = TrainConfig(epochs=1, lr=3e-3, optimizer="adamw", batch_size=16, schedule="constant")


def _fixed_batch(data):
    inputs, mask, labels = blocks(data.val, BLOCK)
    return {"input_ids": inputs, "attention_mask": mask, "labels": labels}


def _loss_on(objective, student, teacher, batch):
    with torch.no_grad():
        s = student(batch["input_ids"], batch["attention_mask"])
        t = teacher(batch["input_ids"], batch["attention_mask"])
        return float(objective({"student.logits": s, "teacher.logits": t, "labels": batch["labels"]})[0])


def test_teacher_learns_the_text(data, teacher):
    val = block_loader(data.val, BLOCK, 16)
    res = _engine().evaluate(teacher, val, task=TOKENS)
    assert res.total == len(data.val) - 1
    assert res.perplexity < 0.5 * data.vocab_size, res.perplexity  # far below a uniform guess
    untrained = _engine().evaluate(GPT(data.vocab_size, 2, 48, 4, BLOCK), val, task=TOKENS)
    assert res.perplexity < 0.5 * untrained.perplexity


@pytest.mark.parametrize(
    "loss, options",
    [
        ("forward_kl", {}),
        ("reverse_kl", {}),
        ("gkd_jsd", {"beta": 0.5}),
        ("skew_kl", {"alpha": 0.1}),
        ("skew_reverse_kl", {"alpha": 0.1}),
        ("total_variation", {}),
    ],
)
def test_teacher_forced_distillation_through_engine_fit_lowers_the_divergence(data, teacher, loss, options):
    objective = Objective([Term.from_name(loss, 1.0, **options)])
    student = _student(data.vocab_size)
    batch = _fixed_batch(data)  # held-out blocks
    before = _loss_on(objective, student, teacher, batch)
    # 8 steps over the first 64 training blocks: enough to see each loss's gradient reach the student.
    loader = block_loader(data.train[: 64 * BLOCK + 1], BLOCK, 16, shuffle=True, seed=2)
    cfg = CFG.model_copy(update={"epochs": 2, "lr": 1e-2})
    fit = _engine().fit(
        "student", student, objective, loader, cfg, task=TOKENS, teacher=FrozenTeacher(teacher)
    )
    assert fit.steps == 8
    after = _loss_on(objective, fit.model, teacher, batch)
    assert after < 0.85 * before, (before, after)
    assert fit.history[0][f"loss.{loss}"] > 0


def test_distilled_student_beats_its_initial_perplexity_and_agrees_with_the_teacher(data, teacher):
    objective = Objective([Term.from_name("forward_kl", 0.9), Term.from_name("ce", 0.1)])
    student = _student(data.vocab_size)
    val = block_loader(data.val, BLOCK, 16)
    start = _engine().evaluate(student, val, task=TOKENS).perplexity
    cfg = CFG.model_copy(update={"epochs": 2})
    loader = block_loader(data.train, BLOCK, 16, shuffle=True, seed=2)
    fit = _engine().fit(
        "student", student, objective, loader, cfg, task=TOKENS, teacher=FrozenTeacher(teacher)
    )
    end = _engine().evaluate(fit.model, val, task=TOKENS).perplexity
    assert end < 0.5 * start, (start, end)
    batch = _fixed_batch(data)
    scored = batch["labels"] != -100

    def agreement(model):
        with torch.no_grad():
            same = model(batch["input_ids"]).argmax(-1) == teacher(batch["input_ids"]).argmax(-1)
        return float(same[scored].float().mean())

    before, after = agreement(_student(data.vocab_size)), agreement(fit.model)
    print(f"perplexity {start:.1f} -> {end:.1f}, agreement with the teacher {before:.2f} -> {after:.2f}")
    assert after > before + 0.3, (before, after)


# ------------------------------------------------------------------------------------------ sparse cache


def _train_blocks(data):
    inputs, mask, _ = blocks(data.train, BLOCK)
    return inputs, mask


def _cache(tmp_path, data, teacher, k, temperature=1.0):
    inputs, mask = _train_blocks(data)
    key = cache_key(teacher, inputs, mask, "tok", k, temperature)
    assert cache_key(FrozenTeacher(teacher), inputs, mask, "tok", k, temperature) == key
    cache = SparseTeacherCache(tmp_path / key, key)
    info = cache.build(teacher, inputs, mask, data.vocab_size, k, temperature)
    return cache, info


def test_cache_at_k_equal_vocab_trains_like_dense_targets(tmp_path, data, teacher):
    v = data.vocab_size
    cache, info = _cache(tmp_path, data, teacher, k=v)
    served = cache.load()
    assert served[SPARSE_KEYS[0]].dtype == torch.int16 and served[SPARSE_KEYS[1]].dtype == torch.float16
    assert float(served[SPARSE_KEYS[2]].float().abs().max()) == 0.0  # nothing outside the top V

    def run(sparse):
        student = _student(v, seed=3)
        loader = block_loader(data.train, BLOCK, 16, shuffle=True, seed=4, extras=served if sparse else None)
        if sparse:
            obj, kw = Objective([sparse_term("forward_kl", 1.0)]), {"steps": sparse_steps()}
        else:
            obj, kw = Objective([Term.from_name("forward_kl", 1.0)]), {"teacher": FrozenTeacher(teacher)}
        return _engine().fit("student", student, obj, loader, CFG, task=TOKENS, **kw)

    dense, sparse = run(False), run(True)
    assert sparse.steps == dense.steps > 5
    # fp16 log-probabilities are the only difference: the losses agree to ~1e-3.
    assert sparse.history[0]["loss"] == pytest.approx(dense.history[0]["loss"], rel=2e-3)
    batch = _fixed_batch(data)
    with torch.no_grad():
        a = dense.model(batch["input_ids"])
        b = sparse.model(batch["input_ids"])
    assert float((a.softmax(-1) - b.softmax(-1)).abs().max()) < 0.05


def test_sparse_targets_from_the_cache_match_the_teacher_and_lower_bound_the_dense_loss(
    tmp_path, data, teacher
):
    cache, info = _cache(tmp_path, data, teacher, k=8)
    served = cache.load()
    inputs, mask = _train_blocks(data)
    x = inputs[:4]
    with torch.no_grad():
        logits = teacher(x)
    ref = SparseTargets.from_logits(logits, 8)
    ids = served[SPARSE_KEYS[0]][:4].long()
    assert torch.equal(ids, ref.ids)
    torch.testing.assert_close(served[SPARSE_KEYS[1]][:4].float(), ref.logprobs, rtol=2e-3, atol=2e-3)
    torch.testing.assert_close(served[SPARSE_KEYS[2]][:4].float(), ref.tail, rtol=2e-3, atol=1e-4)
    student = _student(data.vocab_size)
    _, _, labels = blocks(data.train, BLOCK)
    with torch.no_grad():
        s = student(x)
    cached = SparseTargets(served[SPARSE_KEYS[0]][:4], served[SPARSE_KEYS[1]][:4], served[SPARSE_KEYS[2]][:4])
    sparse_loss, dense_loss = forward_kl(s, cached, labels[:4]), forward_kl(s, logits, labels[:4])
    assert 0 < float(sparse_loss) < float(dense_loss)


def test_cache_bytes_per_token_key_and_integrity(tmp_path, data, teacher):
    cache, info = _cache(tmp_path, data, teacher, k=8)
    positions = _train_blocks(data)[0].numel()
    assert info.positions == positions
    assert info.bytes_per_token == bytes_per_token(8, data.vocab_size) == 8 * (2 + 2) + 2  # int16 ids, fp16
    assert 0 < info.file_bytes - positions * 34 < 1024  # the safetensors header and nothing else
    dense_fp16 = 2 * data.vocab_size
    assert info.bytes_per_token < dense_fp16 / 10
    assert id_dtype(32768) == torch.int16 and id_dtype(32769) == torch.int32
    assert bytes_per_token(64, 50257) == 64 * (4 + 2) + 2  # GPT-2's vocabulary needs int32 ids
    assert cache.info() == info and cache.complete()
    assert set(cache.load(vocab_size=data.vocab_size)) == set(SPARSE_KEYS)
    with pytest.raises(ModelError, match=f"over {data.vocab_size} tokens .* the student predicts 5000"):
        cache.load(vocab_size=5000)
    # Another teacher (or data, or tokenizer) has another key: its cache refuses this directory.
    other = GPT(data.vocab_size, 2, 48, 4, BLOCK)
    inputs, mask = _train_blocks(data)
    for key in (
        cache_key(other, inputs, mask, "tok", 8, 1.0),
        cache_key(teacher, inputs[:-1], mask[:-1], "tok", 8, 1.0),
        cache_key(teacher, inputs, mask, "another tokenizer", 8, 1.0),
    ):
        assert key != cache.key
        with pytest.raises(CheckpointError, match="made for another teacher, data or tokenizer"):
            SparseTeacherCache(cache.directory, key).load()
    # A changed file is refused by its hash.
    path = cache.directory / "targets.safetensors"
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        cache.load()


def test_sparse_term_refuses_another_temperature_and_feeds_through_served_steps(tmp_path, data, teacher):
    cache, _ = _cache(tmp_path, data, teacher, k=4, temperature=2.0)
    served = cache.load()
    loader = block_loader(data.train, BLOCK, 8, extras=served)
    batch = next(iter(loader))
    steps = sparse_steps()
    student = _student(data.vocab_size)
    term = sparse_term("gkd_jsd", 1.0, made_at=2.0, temperature=2.0, beta=0.3)
    steps.open(student, Objective([term]), StepRuntime(torch.device("cpu"), TOKENS, lambda m: m))
    tensors = steps.tensors(student, batch, StepPosition(0, 0))
    assert set(SPARSE_KEYS) <= set(tensors)
    assert term(tensors).item() > 0
    wrong = sparse_term("gkd_jsd", 1.0, made_at=2.0, temperature=1.0)
    with pytest.raises(ValueError, match="made at temperature 2.0, the loss asks for 1.0"):
        wrong(tensors)
    with pytest.raises(KeyError, match="not a token divergence"):
        sparse_term("kd")
    steps.close()


# ------------------------------------------------------------------------ on-policy (GKD) and sequence-level KD


def _gkd_fit(data, teacher, lmbda, seed=5, epochs=1, blocks_used=64):
    student = _student(data.vocab_size)
    steps = OnPolicyStep(FrozenTeacher(teacher), lmbda=lmbda, prompt_len=8, seed=seed)
    loader = block_loader(data.train[: blocks_used * BLOCK + 1], BLOCK, 16, shuffle=True, seed=2)
    objective = Objective([Term.from_name("gkd_jsd", 1.0, beta=0.5)])
    cfg = CFG.model_copy(update={"epochs": epochs, "lr": 1e-2})
    fit = _engine().fit("student", student, objective, loader, cfg, task=TOKENS, steps=steps)
    return fit, steps


def test_on_policy_step_scores_the_students_own_continuations(data, teacher):
    student = _student(data.vocab_size)
    steps = OnPolicyStep(FrozenTeacher(teacher), lmbda=1.0, prompt_len=8, seed=0)
    objective = Objective([Term.from_name("gkd_jsd", 1.0)])
    steps.open(student, objective, StepRuntime(torch.device("cpu"), TOKENS, lambda m: m))
    batch = next(iter(block_loader(data.train, BLOCK, 4)))
    t = steps.tensors(student, batch, StepPosition(0, 0))
    steps.close()
    labels = t["labels"]
    assert (labels[:, :7] == -100).all() and (labels[:, -1] == -100).all()
    sequences = generate(student, batch["input_ids"][:, :8], BLOCK - 8, generator=_gen(0, 0, 0))
    assert torch.equal(labels[:, 7:-1], sequences[:, 8:])  # the sampled tokens are the targets' positions
    assert not torch.equal(sequences[:, 8:], batch["input_ids"][:, 8:])  # not the data
    with torch.no_grad():
        torch.testing.assert_close(t["teacher.logits"], teacher(sequences))
        torch.testing.assert_close(t["student.logits"], student(sequences))
    assert continuation_labels(torch.arange(6)[None], 2).tolist() == [[-100, 2, 3, 4, 5, -100]]


def _gen(seed, epoch, batch):
    return torch.Generator().manual_seed(stable_seed(seed, epoch, batch, 1))


def test_gkd_lambda_zero_is_teacher_forced_and_runs_are_deterministic(data, teacher):
    forced, steps0 = _gkd_fit(data, teacher, 0.0)
    assert steps0.on_policy_steps == 0
    student = _student(data.vocab_size)
    loader = block_loader(data.train[: 64 * BLOCK + 1], BLOCK, 16, shuffle=True, seed=2)
    objective = Objective([Term.from_name("gkd_jsd", 1.0, beta=0.5)])
    cfg = CFG.model_copy(update={"lr": 1e-2})
    plain = _engine().fit(
        "student", student, objective, loader, cfg, task=TOKENS, teacher=FrozenTeacher(teacher)
    )
    assert forced.history[0]["loss"] == plain.history[0]["loss"]
    a, steps_a = _gkd_fit(data, teacher, 0.5)
    b, _ = _gkd_fit(data, teacher, 0.5)
    coins = [steps_a.is_on_policy(StepPosition(0, i)) for i in range(4)]
    assert steps_a.on_policy_steps == sum(coins) and 0 < sum(coins) < 4
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a.history[0]["loss"] != forced.history[0]["loss"]


def test_on_policy_distillation_lowers_the_divergence_on_the_students_samples(data, teacher):
    def on_samples(student):
        prompts = blocks(data.val, BLOCK)[0][:, :8]
        seqs = generate(student, prompts, BLOCK - 8, seed=11)
        labels = continuation_labels(seqs, 8)
        with torch.no_grad():
            return float(L_jsd(student(seqs), teacher(seqs), labels))

    before = on_samples(_student(data.vocab_size))
    fit, steps = _gkd_fit(data, teacher, 1.0, epochs=2)
    assert steps.on_policy_steps == fit.steps == 8
    after = on_samples(fit.model)
    assert after < 0.85 * before, (before, after)


def test_sequence_level_kd_learns_the_teachers_greedy_continuations(data, teacher):
    prompts = blocks(data.train, BLOCK)[0][:64, :8]
    ids, mask, labels = sequence_kd_set(FrozenTeacher(teacher), prompts, BLOCK)
    assert ids.shape == labels.shape == (64, BLOCK) and torch.equal(ids[:, :8], prompts)
    with torch.no_grad():
        greedy = teacher(ids).argmax(-1)
    scored = labels != -100
    assert torch.equal(greedy[scored], labels[scored])  # each target is the teacher's argmax given its prefix
    student = _student(data.vocab_size)
    loader = TokenLoader(ids, mask, labels, 16, shuffle=True, seed=1, trim=False)

    def agreement(model):
        with torch.no_grad():
            return float((model(ids).argmax(-1) == labels)[scored].float().mean())

    before = agreement(student)
    cfg = CFG.model_copy(update={"epochs": 3, "lr": 1e-2})
    fit = _engine().fit("student", student, Objective.hard_labels(), loader, cfg, task=TOKENS)
    assert agreement(fit.model) > before + 0.3


@pytest.mark.parametrize("provider", [LMTeacherStep, OnPolicyStep])
def test_a_student_with_another_vocabulary_is_refused_before_any_step(data, teacher, provider):
    student = GPT(data.vocab_size + 1, 1, 32, 4, BLOCK)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    loader = block_loader(data.train[: 16 * BLOCK + 1], BLOCK, 16)
    steps = provider(FrozenTeacher(teacher))
    objective = Objective([Term.from_name("forward_kl", 1.0)])
    with pytest.raises(
        ModelError, match=f"the teacher predicts {data.vocab_size} tokens, the student {data.vocab_size + 1}"
    ):
        _engine().fit("student", student, objective, loader, CFG, task=TOKENS, steps=steps)
    assert all(torch.equal(before[k], v) for k, v in student.state_dict().items())


def test_interrupted_on_policy_phase_resumes_bit_identically(data, teacher, tmp_path, monkeypatch):
    def run(directory, resume=False):
        student = _student(data.vocab_size)
        steps = OnPolicyStep(FrozenTeacher(teacher), lmbda=0.5, prompt_len=8, seed=9)
        loader = block_loader(data.train[: 64 * BLOCK + 1], BLOCK, 16, shuffle=True, seed=2)
        objective = Objective([Term.from_name("gkd_jsd", 1.0, beta=0.5)])
        cfg = CFG.model_copy(update={"epochs": 2, "lr": 1e-2})
        policy = CheckpointPolicy(directory, every_steps=2, resume=resume)
        return _engine().fit(
            "student", student, objective, loader, cfg, task=TOKENS, steps=steps, checkpoint=policy
        )

    reference = run(tmp_path / "ref")

    class Killed(Exception):
        pass

    hits = {"n": 0}

    def hit(point):
        hits["n"] += point == "step"
        if hits["n"] == 7:  # epoch 2 of 2 (4 steps each), one step after the state of step 6
            raise Killed

    monkeypatch.setattr("kdkit.engine.faults.hit", hit)
    with pytest.raises(Killed):
        run(tmp_path / "run")
    monkeypatch.setattr("kdkit.engine.faults.hit", lambda point: None)
    resumed = run(tmp_path / "run", resume=True)
    assert resumed.steps == reference.steps == 8
    ref, res = reference.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(ref[k], res[k]) for k in ref)
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in reference.history]


def test_training_on_top_8_targets_lowers_the_dense_divergence(tmp_path, data, teacher):
    cache, _ = _cache(tmp_path, data, teacher, k=8)
    served = cache.load(vocab_size=data.vocab_size)
    n = 64  # the first 64 blocks, as in the teacher-forced tests
    extras = {k: v[:n] for k, v in served.items()}
    loader = block_loader(data.train[: n * BLOCK + 1], BLOCK, 16, shuffle=True, seed=2, extras=extras)
    student = _student(data.vocab_size)
    dense = Objective([Term.from_name("forward_kl", 1.0)])
    batch = _fixed_batch(data)
    before = _loss_on(dense, student, teacher, batch)
    cfg = CFG.model_copy(update={"epochs": 2, "lr": 1e-2})
    objective = Objective([sparse_term("forward_kl", 1.0)])
    fit = _engine().fit("student", student, objective, loader, cfg, task=TOKENS, steps=sparse_steps())
    assert fit.steps == 8
    after = _loss_on(dense, fit.model, teacher, batch)  # the full-vocabulary KL on held-out blocks
    assert after < 0.85 * before, (before, after)
