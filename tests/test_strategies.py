"""Strategies on real MNIST: joint (Apprentice), mutual learning (DML), born-again generations, TAKD."""

import copy
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
import yaml

from kdkit import data as kdata
from kdkit.cohort import Cohort
from kdkit.config import DistillConfig, TrainConfig, build_config
from kdkit.data.loader import InMemoryLoader, channel_stats
from kdkit.engine import Engine
from kdkit.errors import ConfigError
from kdkit.experiment import run_experiment
from kdkit.model_io import load_model
from kdkit.models import create
from kdkit.objective import Objective
from kdkit.runtime import resolve_runtime
from kdkit.strategies import check_strategy, joint_objective, mutual_objective
from kdkit.teacher import FrozenTeacher

BASE = {
    "name": "strat",
    "data": {"dataset": "mnist", "val_size": 500, "train_limit": 6500},
    "teacher": {
        "model": {"name": "mlp", "hidden": [128]},
        "train": {"epochs": 3, "batch_size": 100, "lr": 0.1, "schedule": "constant"},
    },
    "student": {
        "model": {"name": "mlp", "hidden": [32]},
        "train": {"epochs": 3, "batch_size": 100, "lr": 0.1, "schedule": "constant"},
    },
    "distill": {"temperature": 2.0, "alpha": 0.9, "beta": 0.1},
    "runtime": {"progress": False, "tensorboard": False, "log_every": 1000, "precision": "fp32"},
}


def _cfg(tmp_path, data_root, **sections):
    raw = copy.deepcopy(BASE)
    raw["data"]["root"] = str(data_root)
    for key, value in sections.items():
        raw[key] = value
    return build_config(raw)


def _state(model):
    return {k: v.detach().clone().float() for k, v in model.state_dict().items()}


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _spy_fit(monkeypatch):
    """Record, for every Engine.fit call, the phase, initial and final weights and the teacher's weights."""
    calls = []
    orig = Engine.fit

    def fit(self, phase, model, objective, loader, cfg, **kw):
        # The teacher reaches fit inside its step provider (online or served outputs), or as teacher=.
        teacher = getattr(kw.get("steps"), "teacher", None) or kw.get("teacher")
        inner = teacher.model if isinstance(teacher, FrozenTeacher) else teacher
        call = {
            "phase": phase,
            "init": _state(model),
            "teacher": _state(inner) if inner is not None else None,
        }
        calls.append(call)
        res = orig(self, phase, model, objective, loader, cfg, **kw)
        call["final"] = _state(res.model)
        call["model"] = res.model
        if inner is not None:
            call["teacher_after"] = _state(inner)
        return res

    monkeypatch.setattr(Engine, "fit", fit)
    return calls


def _mnist_batch(data_root, n=64):
    ds = kdata.load_dataset("mnist", "train", root=str(data_root))
    mean, std = channel_stats(ds.images[:1000])
    loader = InMemoryLoader(ds.images[:n], ds.labels[:n], n, shuffle=False, mean=mean, std=std)
    b = next(iter(loader))
    return b.x, b.y


def _mlp(hidden, seed):
    torch.manual_seed(seed)
    return create("mlp", num_classes=10, in_channels=1, image_size=28, hidden=hidden)


# --- configuration --------------------------------------------------------------------------------------


def test_strategy_config_validates_options_per_kind(tmp_path, data_root):
    with pytest.raises(ConfigError, match=r"strategy.*generations applies to kind born_again, not 'joint'"):
        _cfg(tmp_path, data_root, strategy={"kind": "joint", "generations": 3})
    with pytest.raises(ConfigError, match=r"strategy.*needs an assistant"):
        _cfg(tmp_path, data_root, strategy={"kind": "takd"})
    with pytest.raises(ConfigError, match=r"num_peers is 3 but 2 peers"):
        _cfg(
            tmp_path,
            data_root,
            strategy={"kind": "mutual", "num_peers": 3, "peers": [{"name": "mlp"}, {"name": "mlp"}]},
        )
    with pytest.raises(ConfigError, match=r"strategy.kind"):
        _cfg(tmp_path, data_root, strategy={"kind": "mutal"})
    with pytest.raises(ConfigError, match=r"strategy.num_peers"):
        _cfg(tmp_path, data_root, strategy={"kind": "mutual", "num_peers": 1})
    # Cross-section checks, before any training.
    joint_terms = _cfg(tmp_path, data_root, strategy={"kind": "joint"}, distill={"terms": [{"loss": "kd"}]})
    with pytest.raises(ConfigError, match=r"distill.terms: strategy.kind 'joint'"):
        check_strategy(joint_terms)
    cached = _cfg(tmp_path, data_root, strategy={"kind": "mutual"}, distill={"teacher_outputs": "precompute"})
    with pytest.raises(ConfigError, match=r"distill.teacher_outputs.*peers change every step"):
        check_strategy(cached)
    idle = _cfg(
        tmp_path, data_root, strategy={"kind": "joint", "stop_teacher_gradient": True, "teacher_ce_weight": 0}
    )
    with pytest.raises(ConfigError, match=r"teacher_ce_weight.*without any gradient"):
        check_strategy(idle)
    # Ensembles and unlabeled transfer sets (kdkit.transfer) are offline strategies.
    members = [{"model": {"name": "mlp", "hidden": [16]}}, {"model": {"name": "mlp", "hidden": [8]}}]
    ens = _cfg(tmp_path, data_root, strategy={"kind": "born_again"}, teacher={"ensemble": members})
    with pytest.raises(ConfigError, match=r"teacher.ensemble: strategy.kind 'born_again'"):
        check_strategy(ens)
    semi = _cfg(
        tmp_path,
        data_root,
        strategy={"kind": "mutual"},
        data={"dataset": "mnist-small", "labeled_count": 100},
    )
    with pytest.raises(ConfigError, match=r"data.labeled_fraction / data.labeled_count: .*'mutual'"):
        check_strategy(semi)
    check_strategy(_cfg(tmp_path, data_root, teacher={"ensemble": members}))  # offline: fine
    # A resolved config (every default written out) loads again for every kind: run dirs stay readable.
    for strategy in (
        {"kind": "offline"},
        {"kind": "joint", "stop_teacher_gradient": True},
        {"kind": "mutual", "num_peers": 3},
        {"kind": "born_again", "generations": 3},
        {"kind": "takd", "assistant": {"model": {"name": "mlp", "hidden": [64]}}},
    ):
        cfg = _cfg(tmp_path, data_root, strategy=strategy)
        again = build_config(yaml.safe_load(cfg.to_yaml()))
        assert again.strategy == cfg.strategy


# --- joint (Apprentice) ---------------------------------------------------------------------------------


def test_joint_stop_gradient_gives_the_teacher_only_its_cross_entropy_gradient(data_root):
    x, y = _mnist_batch(data_root)
    d = DistillConfig(temperature=4.0, alpha=0.9, beta=0.1)
    grads = {}
    for stop in (True, False):
        teacher, student = _mlp([64], 0), _mlp([16], 1)
        cohort = Cohort({"teacher": teacher, "student": student}, "student")
        logits = cohort(x)
        tensors = {"student.logits": logits, "labels": y, **cohort.step_tensors()}
        loss, parts = joint_objective(d, 1.0, stop)(tensors)
        loss.backward()
        grads[stop] = (
            [p.grad.clone() for p in teacher.parameters()],
            [p.grad.clone() for p in student.parameters()],
        )
        assert set(parts) == {"teacher_ce", "kd", "ce"}
    # The teacher's gradient with stop_teacher_gradient equals the gradient of its cross-entropy alone.
    teacher = _mlp([64], 0)
    F.cross_entropy(teacher(x), y).backward()
    ce_only = [p.grad for p in teacher.parameters()]
    for g, ref in zip(grads[True][0], ce_only):
        torch.testing.assert_close(g, ref, rtol=1e-5, atol=1e-7)
    # Without it the distillation term also pulls the teacher (toward the student).
    diff = max((g - ref).abs().max().item() for g, ref in zip(grads[False][0], ce_only))
    assert diff > 1e-4, diff
    # The student's gradient is the same either way.
    for a, b in zip(grads[True][1], grads[False][1]):
        torch.testing.assert_close(a, b)


def test_joint_stop_gradient_teacher_trains_exactly_like_alone_through_the_engine(data_root):
    """Through Engine.fit: with the stop, the joint teacher's weights follow plain CE training step for step."""
    ds = kdata.load_dataset("mnist", "train", root=str(data_root))
    mean, std = channel_stats(ds.images[:1000])
    tcfg = TrainConfig(epochs=1, batch_size=50, lr=0.05, schedule="cosine")
    eng = Engine(resolve_runtime("fp32"), progress=False, log_every=1000)

    def loader():
        return InMemoryLoader(ds.images[:600], ds.labels[:600], 50, shuffle=True, seed=3, mean=mean, std=std)

    alone = eng.fit("alone", _mlp([64], 0), Objective.hard_labels(), loader(), tcfg).model
    d = DistillConfig(temperature=4.0, alpha=0.9, beta=0.1)
    finals = {}
    for stop in (True, False):
        cohort = Cohort({"teacher": _mlp([64], 0), "student": _mlp([16], 1)}, "student")
        fit = eng.fit("joint", cohort, joint_objective(d, 1.0, stop), loader(), tcfg)
        finals[stop] = fit.model.members["teacher"]
        assert set(fit.history[0]) >= {"loss.teacher_ce", "loss.kd", "loss.ce"}
    for a, b in zip(finals[True].parameters(), alone.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    moved = max((a - b).abs().max().item() for a, b in zip(finals[False].parameters(), alone.parameters()))
    assert moved > 1e-4, moved


def test_joint_run_trains_the_teacher_and_offline_leaves_it_frozen(tmp_path, data_root, monkeypatch):
    calls = _spy_fit(monkeypatch)
    cfg = _cfg(tmp_path, data_root, phases=["teacher", "scratch", "distill"])
    off = run_experiment(cfg, tmp_path / "offline")
    kd_call = next(c for c in calls if c["phase"] == "student_kd")
    assert _same(kd_call["teacher"], kd_call["teacher_after"])  # frozen distillation: teacher unchanged

    teacher_ckpt = str(tmp_path / "offline" / "checkpoints" / "teacher")
    calls.clear()
    jcfg = _cfg(
        tmp_path,
        data_root,
        phases=["scratch", "distill"],
        teacher={**BASE["teacher"], "checkpoint": teacher_ckpt},
        strategy={"kind": "joint"},
    )
    joint = run_experiment(jcfg, tmp_path / "joint")
    assert [c["phase"] for c in calls] == ["student_scratch", "joint"]
    jc = calls[1]
    trained_teacher = _state(load_model(teacher_ckpt)[0])
    start = {
        k[len("members.teacher.") :]: v for k, v in jc["init"].items() if k.startswith("members.teacher.")
    }
    end = {
        k[len("members.teacher.") :]: v for k, v in jc["final"].items() if k.startswith("members.teacher.")
    }
    assert _same(start, trained_teacher)  # joint starts from the trained teacher ...
    assert not _same(end, trained_teacher)  # ... and trains it
    # The joint student starts from the scratch student's initial weights.
    s0 = {k[len("members.student.") :]: v for k, v in jc["init"].items() if k.startswith("members.student.")}
    assert _same(s0, calls[0]["init"])
    # Both jointly trained models are evaluated, recorded and saved; the loaded teacher is reported too.
    models = joint["models"]
    assert set(models) == {"teacher", "student_scratch", "teacher_joint", "student_kd"}
    assert models["teacher"]["errors"] == off["models"]["teacher"]["errors"]
    for role in ("teacher_joint", "student_kd"):
        rec = models[role]
        assert rec["strategy"] == "joint" and rec["phase"] == "joint" and rec["test_size"] == 10000
        # Learning, though the untrained student pulls the teacher (2 epochs, no stop-gradient): ~75-80%.
        assert rec["accuracy"] > 0.6, (role, rec["accuracy"])
        saved, meta = load_model(tmp_path / "joint" / "checkpoints" / role)
        assert meta["metrics"]["errors"] == rec["errors"]
    assert models["teacher_joint"]["trained_with"] == ["student_kd"]
    assert models["teacher_joint"]["params"] == models["teacher"]["params"]
    assert _same(_state(load_model(tmp_path / "joint" / "checkpoints" / "teacher_joint")[0]), end)
    # Per-epoch validation of every member, in the metrics log.
    recs = [json.loads(line) for line in (tmp_path / "joint" / "metrics.jsonl").read_text().splitlines()]
    epoch = [r for r in recs if r["phase"] == "joint" and "val_accuracy.teacher" in r]
    assert len(epoch) == 3 and all(0.5 < r["val_accuracy.student"] <= 1 for r in epoch)


# --- mutual learning (DML) ------------------------------------------------------------------------------


def test_mutual_objective_matches_a_hand_computation(data_root):
    x, y = _mnist_batch(data_root)
    names = ["peer_1", "peer_2", "peer_3"]
    peers = {n: _mlp([32], i) for i, n in enumerate(names)}
    cohort = Cohort(peers, "peer_1")
    logits = cohort(x)
    tensors = {"student.logits": logits, "labels": y, **cohort.step_tensors()}
    d = DistillConfig(loss="kd", temperature=1.0, alpha=1.0, beta=1.0)
    loss, parts = mutual_objective(d, names)(tensors)

    # By hand: each peer's CE plus the mean over the other peers of KL(p_other || p_self).
    out = {n: tensors[f"{n}.logits"] for n in names}
    want_total = 0.0
    for n in names:
        ce = F.cross_entropy(out[n], y)
        kls = []
        for o in names:
            if o == n:
                continue
            p_o = torch.softmax(out[o], dim=1)
            kls.append((p_o * (torch.log(p_o) - torch.log_softmax(out[n], dim=1))).sum(dim=1).mean())
        kl = sum(kls) / len(kls)
        assert parts[f"ce.{n}"].item() == pytest.approx(ce.item(), rel=1e-5)
        assert parts[f"kd.{n}"].item() == pytest.approx(kl.item(), rel=1e-4)
        assert kl.item() > 0.01  # differently initialised peers disagree
        want_total += ce.item() + kl.item()
    assert loss.item() == pytest.approx(want_total, rel=1e-5)

    # Each peer's gradient is that of its own loss with the others' predictions detached.
    loss.backward()
    for n in names:
        own = peers[n]
        ref = _mlp([32], names.index(n))
        ref.load_state_dict(own.state_dict())
        z = ref(x)
        others = [out[o].detach() for o in names if o != n]
        mine = F.cross_entropy(z, y) + sum(
            F.kl_div(F.log_softmax(z, 1), F.log_softmax(t, 1), reduction="batchmean", log_target=True)
            for t in others
        ) / len(others)
        mine.backward()
        for p, q in zip(own.parameters(), ref.parameters()):
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-7)


def test_mutual_run_updates_every_peer_and_alpha_zero_is_independent_training(
    tmp_path, data_root, monkeypatch
):
    calls = _spy_fit(monkeypatch)
    distill = {"loss": "kd", "temperature": 1.0, "alpha": 1.0, "beta": 1.0}
    cfg = _cfg(
        tmp_path, data_root, phases=["scratch", "distill"], strategy={"kind": "mutual"}, distill=distill
    )
    summary = run_experiment(cfg, tmp_path / "dml")
    assert [c["phase"] for c in calls] == ["student_scratch", "mutual"]
    scratch, dml = calls
    assert set(summary["models"]) == {"student_scratch", "peer_1", "peer_2"}
    for n in ("peer_1", "peer_2"):
        start = {
            k[len(f"members.{n}.") :]: v for k, v in dml["init"].items() if k.startswith(f"members.{n}.")
        }
        end = {k[len(f"members.{n}.") :]: v for k, v in dml["final"].items() if k.startswith(f"members.{n}.")}
        assert not _same(start, end)  # every peer is trained
        rec = summary["models"][n]
        assert rec["accuracy"] > 0.85 and rec["strategy"] == "mutual"
        assert _same(_state(load_model(tmp_path / "dml" / "checkpoints" / n)[0]), end)
    p1 = {k[len("members.peer_1.") :]: v for k, v in dml["init"].items() if k.startswith("members.peer_1.")}
    p2 = {k[len("members.peer_2.") :]: v for k, v in dml["init"].items() if k.startswith("members.peer_2.")}
    assert _same(p1, scratch["init"]) and not _same(p1, p2)  # peer 1 starts like the scratch student

    # alpha = 0 removes the mutual terms: each peer trains exactly as it would alone (the benchmark baseline).
    calls.clear()
    ind = _cfg(
        tmp_path,
        data_root,
        phases=["distill"],
        strategy={"kind": "mutual"},
        distill={**distill, "alpha": 0.0},
    )
    run_experiment(ind, tmp_path / "independent")
    alone = {
        k[len("members.peer_1.") :]: v
        for k, v in calls[0]["final"].items()
        if k.startswith("members.peer_1.")
    }
    for k, v in alone.items():
        torch.testing.assert_close(v, scratch["final"][k], rtol=1e-4, atol=1e-6)
    with_dml = {
        k[len("members.peer_1.") :]: v for k, v in dml["final"].items() if k.startswith("members.peer_1.")
    }
    assert max((with_dml[k] - alone[k]).abs().max().item() for k in alone) > 1e-3


# --- born-again and TAKD: sequences of distillation phases -----------------------------------------------


def test_born_again_each_generation_is_taught_by_the_previous_one_and_resumes_per_generation(
    tmp_path, data_root, monkeypatch
):
    calls = _spy_fit(monkeypatch)
    teacher = {"model": {"name": "mlp", "hidden": [48]}, "train": BASE["teacher"]["train"]}
    cfg = _cfg(
        tmp_path,
        data_root,
        phases=["teacher", "distill"],
        teacher=teacher,
        strategy={"kind": "born_again", "generations": 3},
    )
    run = tmp_path / "ban"
    summary = run_experiment(cfg, run)
    ckpt = run / "checkpoints"
    assert [c["phase"] for c in calls] == ["teacher", "born_again_1", "born_again_2", "born_again_3"]
    assert list(summary["models"]) == ["teacher", "born_again_1", "born_again_2", "born_again_3"]
    prev = "teacher"
    for k in (1, 2, 3):
        role = f"born_again_{k}"
        rec = summary["models"][role]
        assert rec["generation"] == k and rec["taught_by"] == prev and rec["accuracy"] > 0.85
        _, meta = load_model(ckpt / role)
        assert meta["metrics"]["taught_by"] == prev and meta["model"]["hidden"] == [48]
        # The teacher handed to generation k's training is generation k-1 as saved.
        assert _same(calls[k]["teacher"], _state(load_model(ckpt / prev)[0]))
        assert not _same(calls[k]["teacher"], calls[k - 1]["teacher"] or {})
        prev = role

    # Resume redoes only the generation whose checkpoint is missing, taught by the saved one before it.
    for suffix in (".json", ".safetensors"):
        (ckpt / f"born_again_3{suffix}").unlink()
    for old in ckpt.glob("born_again_3-state-*"):
        old.unlink()
    calls.clear()
    again = run_experiment(cfg, run, resume=True)
    assert [c["phase"] for c in calls] == ["born_again_3"]
    assert _same(calls[0]["teacher"], _state(load_model(ckpt / "born_again_2")[0]))
    assert again["models"]["born_again_3"]["errors"] == summary["models"]["born_again_3"]["errors"]


def test_takd_trains_the_assistant_from_the_teacher_and_the_student_from_the_assistant(
    tmp_path, data_root, monkeypatch
):
    calls = _spy_fit(monkeypatch)
    assistant = {"model": {"name": "mlp", "hidden": [64]}, "train": BASE["student"]["train"]}
    cfg = _cfg(
        tmp_path, data_root, phases=["teacher", "distill"], strategy={"kind": "takd", "assistant": assistant}
    )
    summary = run_experiment(cfg, tmp_path / "takd")
    ckpt = tmp_path / "takd" / "checkpoints"
    assert [c["phase"] for c in calls] == ["teacher", "assistant", "student_kd"]
    teacher_w, assistant_w = (
        _state(load_model(ckpt / "teacher")[0]),
        _state(load_model(ckpt / "assistant")[0]),
    )
    assert _same(calls[1]["teacher"], teacher_w)
    assert _same(calls[2]["teacher"], assistant_w)  # the student's teacher is the assistant ...
    assert calls[2]["teacher"]["features.fc1.weight"].shape == (64, 784)  # ... not the 128-wide teacher
    models = summary["models"]
    assert list(models) == ["teacher", "assistant", "student_kd"]
    assert models["assistant"]["taught_by"] == "teacher" and models["student_kd"]["taught_by"] == "assistant"
    assert models["teacher"]["params"] > models["assistant"]["params"] > models["student_kd"]["params"]
    assert all(rec["accuracy"] > 0.85 for rec in models.values())


def test_cohort_phase_resumes_mid_epoch_bit_identical(tmp_path, data_root, monkeypatch):
    """A mutual-learning phase killed between checkpoints continues from its newest state to the same peers."""
    sections = {
        "phases": ["distill"],
        "strategy": {"kind": "mutual", "num_peers": 3},
        "distill": {"loss": "kd", "temperature": 1.0, "alpha": 1.0, "beta": 1.0},
        "runtime": {**BASE["runtime"], "checkpoint_every_steps": 7},
    }
    cfg = _cfg(tmp_path, data_root, **sections)
    reference = run_experiment(cfg, tmp_path / "ref")

    class Killed(Exception):
        pass

    hits = {"n": 0}

    def hit(point):
        if point == "step":
            hits["n"] += 1
            if hits["n"] == 95:  # epoch 2 of 3 (60 steps each), 4 steps after the state of step 91
                raise Killed

    monkeypatch.setattr("kdkit.engine.faults.hit", hit)
    with pytest.raises(Killed):
        run_experiment(cfg, tmp_path / "run")
    states = sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("mutual-state-*.json"))
    assert states[-1] == "mutual-state-000000091.json"
    monkeypatch.setattr("kdkit.engine.faults.hit", lambda point: None)
    resumed = run_experiment(cfg, tmp_path / "run", resume=True)
    for p in ("peer_1", "peer_2", "peer_3"):
        assert resumed["models"][p]["errors"] == reference["models"][p]["errors"]
        a = _state(load_model(tmp_path / "ref" / "checkpoints" / p)[0])
        b = _state(load_model(tmp_path / "run" / "checkpoints" / p)[0])
        assert _same(a, b), p


def test_joint_training_under_two_ranks_matches_one_process(tmp_path, data_root):
    """The cohort trains inside DDP like any student: 2 gloo ranks give the 1-process result."""
    raw = copy.deepcopy(BASE)
    raw["data"]["root"] = str(data_root)
    raw.update(phases=["distill"], strategy={"kind": "joint"})
    raw["runtime"]["threads"] = 1
    raw["student"]["train"].update(lr=0.05, schedule="cosine")  # a settled end: rank count only reorders sums
    cfg = tmp_path / "joint.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("KDKIT_FAULT")},
        "MASTER_ADDR": "127.0.0.1",
        "GLOO_SOCKET_IFNAME": "lo",
    }
    models = {}
    for n in (1, 2):
        cmd = [
            sys.executable,
            "-m",
            "kdkit",
            "run",
            str(cfg),
            "--run-dir",
            str(tmp_path / f"n{n}"),
            "--nproc",
            str(n),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        models[n] = json.loads((tmp_path / f"n{n}" / "summary.json").read_text())["models"]
    epochs = {}
    for n in (1, 2):
        recs = [json.loads(x) for x in (tmp_path / f"n{n}" / "metrics.jsonl").read_text().splitlines()]
        epochs[n] = [r for r in recs if r["phase"] == "joint" and "val_accuracy.teacher" in r]
    assert len(epochs[1]) == len(epochs[2]) == 3
    for a, b in zip(epochs[1], epochs[2]):
        for key in ("loss", "loss.teacher_ce", "loss.kd", "loss.ce"):
            assert abs(a[key] - b[key]) <= 0.02 * a[key] + 1e-3, (key, a[key], b[key])
    assert set(models[1]) == set(models[2]) == {"teacher_joint", "student_kd"}
    for role in ("teacher_joint", "student_kd"):
        one, two = models[1][role], models[2][role]
        assert one["steps"] == two["steps"] == 3 * 60
        assert abs(one["accuracy"] - two["accuracy"]) <= 0.006, (role, one["accuracy"], two["accuracy"])
        assert two["test_size"] == 10000 and sum(two["errors_per_class"]) == two["errors"]


def test_resume_reads_a_run_saved_before_the_strategy_section_as_offline(tmp_path, data_root):
    from kdkit.run_dir import check_resumable

    cfg = _cfg(tmp_path, data_root)
    saved = yaml.safe_load(cfg.to_yaml())
    del saved["strategy"]  # a run directory written by kdkit before strategies existed
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved))
    check_resumable(tmp_path, cfg)
    with pytest.raises(ConfigError, match=r"section\(s\) \['strategy'\]"):
        check_resumable(tmp_path, _cfg(tmp_path, data_root, strategy={"kind": "joint"}))


def test_resume_reads_fields_added_inside_a_section_as_their_defaults(tmp_path, data_root):
    from kdkit.run_dir import check_resumable

    cfg = _cfg(tmp_path, data_root)
    saved = yaml.safe_load(cfg.to_yaml())
    # A run directory written before data.labeled_* and distill.ensemble existed.
    for key in ("labeled_fraction", "labeled_count"):
        saved["data"].pop(key, None)
    saved["distill"].pop("ensemble", None)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved))
    check_resumable(tmp_path, cfg)
    changed = _cfg(tmp_path, data_root, data={**BASE["data"], "root": str(data_root), "labeled_count": 100})
    with pytest.raises(ConfigError, match=r"section\(s\) \['data'\]"):
        check_resumable(tmp_path, changed)
    # A saved field kdkit does not know is compared as written, and named.
    saved["distill"]["retired_option"] = 1
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved))
    with pytest.raises(ConfigError, match=r"section\(s\) \['distill'\]"):
        check_resumable(tmp_path, cfg)
