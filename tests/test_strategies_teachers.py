"""Teacher strategies: ensembles (average, random, relabel), unlabeled transfer sets, label-smoothing warning."""

import json
import warnings

import numpy as np
import pytest
import torch

from kdkit import data as kdata
from kdkit import faults
from kdkit.checkpoint import save_checkpoint
from kdkit.config import UnlabeledConfig, build_config
from kdkit.data import bundle as bundle_module
from kdkit.data.loader import Augment, apply_params, augment_draws
from kdkit.data.splits import limit_uniform
from kdkit.engine import RunInterrupted
from kdkit.ensemble import EnsembleTeacher, normalized_weights
from kdkit.errors import ConfigError, DataError, ModelError
from kdkit.experiment import run_experiment
from kdkit.label_smoothing import TeacherLabelSmoothingWarning, checkpoint_label_smoothing
from kdkit.losses import kd, soft_target_kd
from kdkit.model_io import load_model
from kdkit.models import create
from kdkit.objective import Objective
from kdkit.signals import STOP
from kdkit.transfer import (
    label_unlabeled,
    mask_unlabeled,
    masked_cross_entropy,
    unlabeled_transfer_set,
)

MEMBERS = [
    {"model": {"name": "mlp", "hidden": [64]}, "train": {"epochs": 2, "lr": 0.1}},
    {"model": {"name": "mlp", "hidden": [32, 32]}, "train": {"epochs": 2, "lr": 0.1}},
    {"model": {"name": "mlp", "hidden": [48]}, "train": {"epochs": 1, "lr": 0.1}},
]
SMALL = {
    "name": "strategies",
    "data": {"dataset": "mnist", "val_size": 500, "train_limit": 3000},
    "teacher": {"ensemble": MEMBERS},
    "student": {"model": {"name": "mlp", "hidden": [16]}, "train": {"epochs": 1, "lr": 0.1}},
    "distill": {"temperature": 4.0},
    "runtime": {"progress": False, "tensorboard": False, "precision": "fp32"},
}


def _mnist_batch(data_root, n=256):
    ds = kdata.load_dataset("mnist", "test", root=data_root)
    x = torch.as_tensor(ds.images[:n]).float().div(255)
    return x, torch.as_tensor(ds.labels[:n])


def _mlps(hiddens, classes=10, seed=0):
    torch.manual_seed(seed)
    return [create("mlp", num_classes=classes, in_channels=1, image_size=28, hidden=h) for h in hiddens]


# --------------------------------------------------------------------------------------------- ensembles


def test_average_mode_soft_targets_are_the_weighted_mean_of_teacher_softmaxes(data_root):
    x, _ = _mnist_batch(data_root)
    members = _mlps([[64], [32, 32], [48]])
    w, T = [0.5, 0.3, 0.2], 4.0
    ens = EnsembleTeacher(members, w, mode="average", temperature=T)
    out = ens(x)
    z = [m(x).detach() for m in members]
    mean = sum(wi * torch.softmax(zi / T, -1) for wi, zi in zip(w, z))
    # What the KD loss sees at temperature T is exactly the weighted mean probability.
    torch.testing.assert_close(torch.softmax(out / T, -1), mean, atol=1e-6, rtol=1e-5)
    s = torch.randn(len(x), 10)
    torch.testing.assert_close(kd(s, out, T), soft_target_kd(s, mean, T), atol=1e-5, rtol=1e-5)
    # The mean is not the average of logits: the two differ for distinct teachers.
    assert not torch.allclose(torch.softmax(out / T, -1), torch.softmax(sum(zi / 3 for zi in z) / T, -1))
    # Frozen: no gradients and eval mode, whatever the caller asks.
    ens.train()
    assert not ens.training and not any(mod.training for t in ens.members for mod in t.model.modules())
    assert all(not p.requires_grad for p in ens.parameters()) and not out.requires_grad


def test_random_mode_uses_one_seeded_teacher_per_batch(data_root):
    x, _ = _mnist_batch(data_root, 64)
    members = _mlps([[64], [32, 32], [48]])
    z = [m(x).detach() for m in members]
    ens = EnsembleTeacher(members, [0.6, 0.2, 0.2], mode="random", seed=7)
    seq = []
    for b in range(300):
        ens.set_position(0, b)
        out = ens(x)
        hits = [i for i, zi in enumerate(z) if torch.equal(out, zi)]
        assert len(hits) == 1  # exactly one teacher's logits, untouched
        seq.append(hits[0])
    counts = np.bincount(seq, minlength=3)
    assert counts.sum() == 300 and (counts > 0).all()
    assert 150 < counts[0] < 210  # drawn with probability 0.6 (binomial sd ~ 8.5)
    assert len({tuple(seq[i : i + 5]) for i in range(0, 300, 5)}) > 20  # switches across batches
    # Reproducible (and resumable): a function of (seed, epoch, batch) only.
    again = EnsembleTeacher(members, [0.6, 0.2, 0.2], mode="random", seed=7)
    assert [again.pick(0, b) for b in range(300)] == seq
    other = EnsembleTeacher(members, [0.6, 0.2, 0.2], mode="random", seed=8)
    assert [other.pick(0, b) for b in range(300)] != seq
    assert ens.picks(2, 150) == [
        sum(ens.pick(e, b) == i for e in range(2) for b in range(150)) for i in range(3)
    ]


def test_weights_given_equal_or_from_validation_accuracy():
    assert normalized_weights("equal", [0.9, 0.8]) == [0.5, 0.5]
    assert normalized_weights([3, 1], [None, None]) == [0.75, 0.25]
    assert normalized_weights("val_accuracy", [0.9, 0.6]) == pytest.approx([0.6, 0.4])
    with pytest.raises(ConfigError, match="val_size"):
        normalized_weights("val_accuracy", [None, 0.5])


def test_mismatched_class_counts_are_a_clear_error(tmp_path, data_root):
    x, _ = _mnist_batch(data_root, 8)
    a, b = _mlps([[16]])[0], _mlps([[16]], classes=5)[0]
    with pytest.raises(ModelError, match=r"same classes.*teacher 1: \(8, 5\)"):
        EnsembleTeacher([a, b])(x)
    # Through a run: a member checkpoint of 5 classes is refused, naming the member.
    meta = {
        "kind": "model",
        "model": {"name": "mlp", "hidden": [16]},
        "num_classes": 5,
        "in_channels": 1,
        "image_size": 28,
        "classes": list("01234"),
    }
    save_checkpoint(tmp_path / "five", b.state_dict(), meta)
    save_checkpoint(
        tmp_path / "ten", a.state_dict(), {**meta, "num_classes": 10, "classes": list("0123456789")}
    )
    cfg = build_config(
        {**SMALL, "teacher": {"ensemble": [str(tmp_path / "ten"), str(tmp_path / "five")]}},
        ["phases=[distill]"],
    )
    with pytest.raises(ModelError, match=r"teacher.ensemble\[1\].checkpoint .* predicts 5 classes"):
        run_experiment(cfg, tmp_path / "run", console=None)


@pytest.fixture(scope="module")
def trained_members(tmp_path_factory, data_root):
    """Train the 3 members once (weights from validation accuracy); return (summary, checkpoint paths)."""
    run = tmp_path_factory.mktemp("members") / "t"
    teachers = run_experiment(
        build_config(SMALL, ["phases=[teacher]", "distill.ensemble.weights=val_accuracy"]), run
    )
    return teachers, [str(run / "checkpoints" / f"teacher_{i}") for i in range(3)]


def test_relabel_adds_augmented_copies_labelled_by_each_teacher(tmp_path, trained_members):
    teachers, ckpts = trained_members
    recs = teachers["models"]
    val = [recs[f"teacher_{i}"]["val_accuracy"] for i in range(3)]
    assert recs["teacher"]["ensemble"]["weights"] == pytest.approx([v / sum(val) for v in val], abs=1e-6)
    assert recs["teacher"]["accuracy"] > 0.8
    loaded = {**SMALL, "teacher": {"ensemble": ckpts}}

    rel = run_experiment(
        build_config(
            loaded,
            ["phases=[distill]", "distill.ensemble.mode=relabel", "distill.ensemble.relabel_copies=1"],
        ),
        tmp_path / "relabel",
    )["models"]["student_kd"]
    assert rel["transfer_size"] == 2500 * 3 * 2 and rel["teacher_outputs"] == "given"

    # The transfer set itself: originals and a jittered copy per teacher, each view with that teacher's logits.
    from kdkit.config import EnsembleConfig
    from kdkit.data.bundle import load_data
    from kdkit.engine import Engine
    from kdkit.phases.context import RunContext
    from kdkit.runtime import resolve_runtime
    from kdkit.transfer import relabel_transfer_set

    cfg = build_config(loaded, ["phases=[distill]"])
    bundle = load_data(cfg.data, cfg.seed)
    ctx = RunContext(cfg, bundle, Engine(resolve_runtime("fp32"), progress=False), tmp_path / "c", False)
    members = [load_model(c)[0] for c in ckpts]
    ens = EnsembleTeacher(members, mode="average", temperature=4.0)
    small = bundle.train.subset(np.arange(100))
    ecfg = EnsembleConfig(mode="relabel", relabel_copies=2, augment={"jitter": 2})
    ds, logits, info = relabel_transfer_set(ctx.teacher_logits, ens, small, ecfg, seed=3)
    assert len(ds) == len(logits) == 100 * 3 * 3 and info["relabel"]["views_per_image"] == 9
    assert (ds.labels == np.tile(small.labels, 9)).all()  # true labels kept for the cross-entropy term
    images = torch.as_tensor(small.images)
    draws = augment_draws(100, 2, Augment(jitter=2), 3 * 7919 + 1)
    copy = apply_params(images, Augment(jitter=2), draws[:, 1])
    view = slice(100 * 5, 100 * 6)  # teacher 1, copy 2
    assert torch.equal(torch.as_tensor(ds.images[view]), copy) and not torch.equal(copy, images)
    norm = (copy.float() / 255 - bundle.mean[0]) / bundle.std[0]
    torch.testing.assert_close(logits[view], members[1](norm).detach(), atol=1e-4, rtol=1e-4)
    assert torch.equal(torch.as_tensor(ds.images[:100]), images)  # each teacher also labels the originals

    rnd = run_experiment(
        build_config(loaded, ["phases=[distill]", "distill.ensemble.mode=random"]), tmp_path / "random"
    )["models"]["student_kd"]
    per = rnd["ensemble"]["batches_per_teacher"]
    assert sum(per) == rnd["steps"] == 20 and sum(c > 0 for c in per) >= 2
    assert rnd["teacher_outputs"] == "online"
    avg = run_experiment(build_config(loaded, ["phases=[distill]"]), tmp_path / "avg")["models"]
    assert avg["student_kd"]["teacher_outputs"] == "precompute" and avg["student_kd"]["accuracy"] > 0.5


def test_random_mode_resumes_with_the_same_teacher_draws(tmp_path, trained_members, monkeypatch):
    _, ckpts = trained_members
    cfg = build_config(
        {**SMALL, "teacher": {"ensemble": ckpts}},
        ["phases=[distill]", "distill.ensemble.mode=random", "student.train.epochs=2"],
    )
    whole = run_experiment(cfg, tmp_path / "whole")["models"]["student_kd"]
    # Stop after step 27 (mid-epoch 2: the epoch and batch positions matter), then resume.
    hits = {"n": 0}

    def stop_at_27(point):
        hits["n"] += point == "step"
        if hits["n"] == 27:
            STOP.signum = 15

    monkeypatch.setattr(faults, "hit", stop_at_27)
    with pytest.raises(RunInterrupted):
        run_experiment(cfg, tmp_path / "cut")
    STOP.clear()
    monkeypatch.undo()
    resumed = run_experiment(cfg, tmp_path / "cut", resume=True)["models"]["student_kd"]
    assert resumed["errors"] == whole["errors"] and resumed["steps"] == whole["steps"] == 40
    a = load_model(tmp_path / "whole" / "checkpoints" / "student_kd")[0].state_dict()
    b = load_model(tmp_path / "cut" / "checkpoints" / "student_kd")[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------------------------- unlabeled data


def test_split_labeled_hides_every_other_label(data_root):
    ds = kdata.load_dataset("mnist", "test", root=data_root)
    lab, hidden = kdata.split_labeled(ds, 1000, seed=0)
    assert len(lab) == 1000 and len(hidden) == 9000 and (hidden.labels == kdata.UNLABELED).all()
    assert len(kdata.split_labeled(ds, 0.25, seed=0)[0]) == 2500
    # The choice reads no label: corrupted labels give the same images.
    bad = kdata.ArrayDataset(ds.images, (ds.labels + 1) % 10, ds.classes, "bad")
    lab2, hidden2 = kdata.split_labeled(bad, 1000, seed=0)
    assert np.array_equal(lab2.images, lab.images) and np.array_equal(hidden2.images, hidden.images)
    assert not np.array_equal(kdata.split_labeled(ds, 1000, seed=1)[0].images, lab.images)
    with pytest.raises(DataError, match="fewer than"):
        kdata.split_labeled(ds, 10000, seed=0)


def test_pseudo_labels_come_from_the_teacher_and_low_confidence_is_dropped():
    lab = kdata.ArrayDataset(np.zeros((3, 1, 4, 4), np.uint8), np.array([0, 1, 2]), list("abc"), "lab")
    hidden = kdata.ArrayDataset(
        np.ones((4, 1, 4, 4), np.uint8), np.full(4, kdata.UNLABELED), list("abc"), "h"
    )
    logits = torch.tensor(
        [[0.0, 0, 0], [0, 0, 0], [0, 0, 0], [5.0, 0, 0], [0, 0, 5.0], [0, 0.1, 0], [0, 4.0, 0]]
    )
    ds, t, info = unlabeled_transfer_set(lab, hidden, logits, UnlabeledConfig(targets="hard", threshold=0.6))
    assert ds.labels.tolist() == [0, 1, 2, 0, 2, 1]  # true labels, then teacher argmax of confident images
    assert torch.equal(t, logits[[0, 1, 2, 3, 4, 6]]) and info["unlabeled_used"] == 3
    ds, _, _ = unlabeled_transfer_set(lab, hidden, logits, UnlabeledConfig(targets="soft"))
    assert ds.labels.tolist() == [0, 1, 2, -1, -1, -1, -1]
    keep, _ = label_unlabeled(logits[3:], UnlabeledConfig(threshold=0.98))  # 0.987, 0.987, 0.35, 0.965
    assert keep.tolist() == [True, True, False, False]


def test_masked_cross_entropy_ignores_unlabeled_samples():
    logits = torch.randn(6, 4, requires_grad=True)
    labels = torch.tensor([1, -1, 3, -1, 0, -1])
    loss = masked_cross_entropy(logits, labels)
    ref = torch.nn.functional.cross_entropy(logits[[0, 2, 4]], labels[[0, 2, 4]])
    torch.testing.assert_close(loss, ref)
    loss.backward()
    assert (logits.grad[[1, 3, 5]] == 0).all() and (logits.grad[[0, 2, 4]] != 0).any()
    assert masked_cross_entropy(torch.randn(2, 4), torch.tensor([-1, -1])).item() == 0.0
    obj = mask_unlabeled(Objective.response("kd", 0.5, 0.5, 2.0))
    assert obj.terms[1].fn is masked_cross_entropy


def test_hidden_labels_never_reach_the_student(tmp_path, data_root, monkeypatch):
    # Hard pseudo-labels, a confidence threshold, two Noisy Student rounds under jitter; then the same run with
    # every hidden label corrupted must give bit-identical students.
    raw = {
        **SMALL,
        "data": {"dataset": "mnist", "val_size": 0, "train_limit": 2500, "labeled_count": 300},
        "teacher": {"model": {"name": "mlp", "hidden": [64]}, "train": {"epochs": 3, "lr": 0.1}},
        "distill": {
            "unlabeled": {"targets": "hard", "threshold": 0.5, "rounds": 2},
            "train": {"epochs": 1, "lr": 0.1, "augment": {"jitter": 1}},
        },
        "phases": ["teacher", "distill"],
    }
    cfg = build_config(raw)
    first = run_experiment(cfg, tmp_path / "a")["models"]
    r1, r2 = first["student_kd_round1"]["unlabeled"], first["student_kd"]["unlabeled"]
    assert r1["labeled"] == 300 and r1["unlabeled_total"] == 2200 and r1["round"] == 1 and r2["round"] == 2
    assert 0 < r1["unlabeled_used"] < 2200 and r2["unlabeled_used"] != r1["unlabeled_used"]  # new teacher

    real = kdata.load_dataset
    # Patched where the run looks it up (kdkit.data.bundle), so that every split it loads is corrupted.
    monkeypatch.setattr(bundle_module, "load_dataset", _corrupting(real, hidden=True))
    second = run_experiment(cfg, tmp_path / "b")["models"]
    for role in ("teacher", "student_kd_round1", "student_kd"):
        assert second[role]["errors"] == first[role]["errors"]
    a = load_model(tmp_path / "a" / "checkpoints" / "student_kd")[0].state_dict()
    b = load_model(tmp_path / "b" / "checkpoints" / "student_kd")[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # The check has teeth: corrupting a labeled image's label does change the result.
    monkeypatch.setattr(bundle_module, "load_dataset", _corrupting(real, hidden=False))
    third = run_experiment(cfg, tmp_path / "c")["models"]
    c = load_model(tmp_path / "c" / "checkpoints" / "student_kd")[0].state_dict()
    assert third["teacher"]["errors"] != first["teacher"]["errors"] or not all(
        torch.equal(a[k], c[k]) for k in a
    )


def _corrupting(real, hidden: bool):
    """Return a load_dataset that shifts the labels of the hidden images (or of 100 labeled ones instead)."""

    def load(name, split="train", **kw):
        ds = real(name, split, **kw)
        if split == "train":
            # Which of the 2,500 images (drawn without reading a label) are labeled: draw and split a copy
            # whose labels are the row numbers.
            rows = limit_uniform(
                kdata.ArrayDataset(ds.images, np.arange(len(ds)), ds.classes, "rows"), 2500, 0
            )
            labeled = kdata.split_labeled(rows, 300, 0)[0].labels
            target = np.setdiff1d(rows.labels, labeled) if hidden else labeled[:100]
            labels = ds.labels.copy()
            labels[target] = (labels[target] + 3) % 10
            ds = kdata.ArrayDataset(ds.images, labels, ds.classes, ds.name)
        return ds

    return load


# --------------------------------------------------------------------------------- label-smoothing warning


def test_teacher_trained_with_label_smoothing_warns_with_the_reason(tmp_path, data_root):
    raw = {
        **SMALL,
        "data": {"dataset": "mnist", "val_size": 200, "train_limit": 1200},
        "teacher": {"model": {"name": "mlp", "hidden": [32]}, "train": {"epochs": 1, "label_smoothing": 0.1}},
        "phases": ["teacher", "distill"],
    }
    with pytest.warns(TeacherLabelSmoothingWarning, match=r"label smoothing 0.1: .*between wrong classes"):
        run_experiment(build_config(raw), tmp_path / "ls")
    ckpt = tmp_path / "ls" / "checkpoints" / "teacher"
    assert checkpoint_label_smoothing(ckpt) == 0.1
    # Loading that checkpoint as the teacher warns too; a teacher trained without smoothing does not.
    with pytest.warns(TeacherLabelSmoothingWarning, match="teacher.checkpoint"):
        run_experiment(
            build_config(raw, ["phases=[distill]", f"teacher.checkpoint={ckpt}"]), tmp_path / "from-ckpt"
        )
    # An older checkpoint without the recorded value: read from the run's config.yaml.
    meta_path = ckpt.with_suffix(".json")
    meta = json.loads(meta_path.read_text())
    del meta["metrics"]["label_smoothing"]
    meta_path.write_text(json.dumps(meta))
    assert checkpoint_label_smoothing(ckpt) == 0.1
    with warnings.catch_warnings():
        warnings.simplefilter("error", TeacherLabelSmoothingWarning)
        run_experiment(build_config(raw, ["teacher.train.label_smoothing=0"]), tmp_path / "plain")


# ------------------------------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "overrides, raw_teacher, message",
    [
        (["distill.ensemble.weights=[1, 2]"], None, "weights has 2 values for 3 teachers"),
        (
            ["distill.ensemble.mode=random", "distill.teacher_outputs=precompute"],
            None,
            "picks a teacher per batch",
        ),
        (["distill.ensemble.mode=relabel", "student.train.augment.jitter=2"], None, "turn off the student"),
        (["distill.ensemble.mode=mean"], None, "distill.ensemble.mode"),
        (["distill.ensemble.weights=[-1, 1, 1]"], None, "weights must be >= 0"),
        (["distill.unlabeled.rounds=2"], None, "distill.unlabeled needs data.labeled_fraction"),
        (["data.labeled_fraction=0.1", "data.labeled_count=10"], None, "not both"),
        (["data.labeled_fraction=1.5"], None, "data.labeled_fraction"),
        (["data.labeled_count=100", "distill.ensemble.mode=random"], None, "cannot do that"),
        (["data.labeled_count=100", "distill.alpha=0"], None, "through the teacher term only"),
        (
            ["distill.ensemble.mode=random"],
            {"model": {"name": "mlp"}},
            "distill.ensemble needs teacher.ensemble",
        ),
        ([], {"train": {"epochs": 1}}, "teacher.model is required"),
        ([], {"ensemble": [{"train": {"epochs": 1}}, "x"]}, r"teacher.ensemble.0: .*needs `model`"),
        ([], {"ensemble": ["a.safetensors"]}, "at least 2"),
        ([], {"model": {"name": "mlp"}, "ensemble": ["a", "b"]}, "replaces teacher.model"),
    ],
)
def test_strategy_config_errors_name_the_fields(overrides, raw_teacher, message):
    raw = {**SMALL, "teacher": raw_teacher} if raw_teacher is not None else SMALL
    with pytest.raises(ConfigError, match=message):
        build_config(raw, overrides)
