"""Rows of benchmarks/strategies.py: teacher ensembles and unlabeled transfer sets on MNIST (cheap MLPs).

- ``ensemble``: three teachers of different architectures; the student distilled from the best single teacher
  and from the ensemble (average with validation-accuracy weights, one random teacher per batch, relabelled
  jittered copies), each against the student trained on the labels alone. Same budget: every student sees the
  same number of training samples (the relabelled set is 6x larger and gets 1/6 of the epochs).
- ``semi_supervised``: 1,000 labeled training images, the other 59,000 unlabeled. The teacher learns from the
  1,000; the student learns from them plus the teacher-labelled rest (soft targets; or Noisy Student: hard
  pseudo-labels above a confidence threshold, jittered student with dropout, two rounds), against the same
  student trained on the 1,000 labeled images for the same number of samples.

Every variant is an ordinary kdkit run; finished runs in the work directory are reused.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path
from typing import Any

from kdkit.config import build_config
from kdkit.console import make_console
from kdkit.experiment import run_experiment

RUNTIME = {"tensorboard": False, "log_every": 100}


def _run(work: Path, name: str, raw: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Return the summary of one kdkit run, reusing a finished one in the work directory."""
    run_dir = work / name
    done = run_dir / "summary.json"
    if done.exists():
        return json.loads(done.read_text())
    raw = copy.deepcopy(raw)
    raw["seed"] = args.seed
    raw["runtime"] = {**RUNTIME, "progress": bool(args.progress)}
    if getattr(args, "threads", None):
        raw["runtime"]["threads"] = args.threads
    return run_experiment(build_config(raw, source=name), run_dir, overwrite=True, console=make_console())


def _entry(label: str, rec: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """Return a result line: the model's test errors and its training time."""
    return {
        "label": label,
        "test_errors": rec["errors"],
        "test_accuracy": rec["accuracy"],
        "seconds": rec["train_seconds"],
        "steps": rec.get("steps"),
        **extra,
    }


def ensemble(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Three MLP teachers; the student from the best one vs from the ensemble (average, random, relabel)."""
    q = args.quick
    data = {"dataset": "mnist", "val_size": 500 if q else 5000, "train_limit": 3000 if q else 15000}
    tt = {"epochs": 1 if q else 20, "batch_size": 128, "lr": 0.05, "augment": {"jitter": 1}}
    members = [
        {"model": {"name": "mlp", "hidden": [512, 512], "dropout": 0.2}, "train": tt},
        {"model": {"name": "mlp", "hidden": [1024], "dropout": 0.2}, "train": tt},
        {"model": {"name": "mlp", "hidden": [256, 256, 256], "dropout": 0.2}, "train": tt},
    ]
    epochs = 6 if q else 24  # divisible by 6: the relabelled set (3 teachers x 2 views) gets epochs / 6
    student = {"model": {"name": "mlp", "hidden": [64]}, "train": {"epochs": epochs, "lr": 0.05}}
    base = {
        "name": "ensemble",
        "data": data,
        "student": student,
        "distill": {"temperature": 4.0, "alpha": 0.9, "beta": 0.1},
    }
    first = _run(
        work, "teachers", {**base, "teacher": {"ensemble": members}, "phases": ["teacher", "scratch"]}, args
    )
    m = first["models"]
    ckpt_dir = Path(first["run_dir"]) / "checkpoints"
    ckpts = [str(ckpt_dir / f"teacher_{i}") for i in range(len(members))]
    best = max(range(len(members)), key=lambda i: m[f"teacher_{i}"]["val_accuracy"])
    single = _run(
        work,
        "single-best",
        {
            **base,
            "teacher": {"model": members[best]["model"], "checkpoint": ckpts[best]},
            "phases": ["distill"],
        },
        args,
    )
    ens = {**base, "teacher": {"ensemble": ckpts}, "phases": ["distill"]}
    avg = _run(
        work,
        "average",
        {**ens, "distill": {**base["distill"], "ensemble": {"weights": "val_accuracy"}}},
        args,
    )
    rnd = _run(work, "random", {**ens, "distill": {**base["distill"], "ensemble": {"mode": "random"}}}, args)
    relabel_cfg = {"mode": "relabel", "relabel_copies": 1, "augment": {"jitter": 1}}
    rel = _run(
        work,
        "relabel",
        {
            **ens,
            "distill": {
                **base["distill"],
                "ensemble": relabel_cfg,
                "train": {**student["train"], "epochs": epochs // 6},
            },
        },
        args,
    )
    teachers = [
        _entry(f"teacher {i}: mlp {mm['model']['hidden']}", m[f"teacher_{i}"]) for i, mm in enumerate(members)
    ]
    teachers.append(_entry("ensemble of the 3 (mean probability)", avg["models"]["teacher"]))
    w = avg["models"]["teacher"]["ensemble"]["weights"]
    return {
        "rows": [
            _entry(
                f"distilled from the best single teacher (teacher {best}, by val accuracy)",
                single["models"]["student_kd"],
            ),
            _entry("distilled from the ensemble: average, val-accuracy weights", avg["models"]["student_kd"]),
            _entry("distilled from the ensemble: random teacher per batch", rnd["models"]["student_kd"]),
            _entry(
                "distilled from the ensemble: relabel (each teacher labels the images + 1 jittered copy)",
                rel["models"]["student_kd"],
            ),
        ],
        "baseline": _entry("student mlp [64] on the labels alone", m["student_scratch"]),
        "teachers": teachers,
        "budget": f"{data['train_limit'] - data['val_size']:,} training images "
        f"(+{data['val_size']} validation), every student {epochs} epochs' worth of samples at batch 128; "
        "T=4, alpha 0.9, beta 0.1",
        "notes": "Teachers (test errors): "
        + "; ".join(f"{t['label']}: {t['test_errors']}" for t in teachers)
        + f". Ensemble weights from validation accuracy: {[round(x, 4) for x in w]}.",
    }


def semi_supervised(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """1,000 labeled MNIST images + the rest unlabeled: teacher-labelled student vs labeled-only student."""
    q = args.quick
    labeled = 200 if q else 1000
    n_train = 3000 if q else 60000
    data: dict[str, Any] = {"dataset": "mnist", "val_size": 0, "labeled_count": labeled}
    if q:
        data["train_limit"] = n_train
    epochs = 1 if q else 5
    base_epochs = epochs * n_train // labeled  # the labeled-only student sees as many samples
    noisy = {"name": "mlp", "hidden": [256, 256], "dropout": 0.2}
    st = {"epochs": epochs, "batch_size": 128, "lr": 0.05, "augment": {"jitter": 2}}
    raw = {
        "name": "semi",
        "data": data,
        "teacher": {
            "model": {"name": "mlp", "hidden": [512, 512], "dropout": 0.3},
            "train": {"epochs": 20 if q else 100, "batch_size": 64, "lr": 0.05, "augment": {"jitter": 2}},
        },
        "student": {"model": noisy, "train": {**st, "epochs": base_epochs}},
        "distill": {"temperature": 4.0, "alpha": 0.9, "beta": 0.1, "train": st},
    }
    first = _run(work, "teacher-and-labeled-only", {**raw, "phases": ["teacher", "scratch"]}, args)
    ckpt = str(Path(first["run_dir"]) / "checkpoints" / "teacher")
    from_ckpt = {**raw, "teacher": {**raw["teacher"], "checkpoint": ckpt}, "phases": ["distill"]}
    soft = _run(
        work, "soft", {**from_ckpt, "distill": {**raw["distill"], "unlabeled": {"targets": "soft"}}}, args
    )
    ns = _run(
        work,
        "noisy-student",
        {
            **from_ckpt,
            "distill": {
                **raw["distill"],
                "alpha": 0.0,
                "beta": 1.0,
                "unlabeled": {"targets": "hard", "threshold": 0.8, "rounds": 2},
            },
        },
        args,
    )
    r1, r2 = ns["models"]["student_kd_round1"], ns["models"]["student_kd"]
    teacher = first["models"]["teacher"]
    return {
        "rows": [
            _entry(
                f"teacher-labelled: {labeled:,} labeled + {n_train - labeled:,} unlabeled, soft targets",
                soft["models"]["student_kd"],
            ),
            _entry(
                "Noisy Student round 1: hard pseudo-labels >= 0.8", r1, kept=r1["unlabeled"]["unlabeled_used"]
            ),
            _entry(
                "Noisy Student round 2 (round-1 student as teacher; 2x budget in total)",
                r2,
                kept=r2["unlabeled"]["unlabeled_used"],
            ),
        ],
        "baseline": _entry(
            f"student on the {labeled:,} labeled images alone", first["models"]["student_scratch"]
        ),
        "teachers": [_entry(f"teacher mlp [512, 512] on the {labeled:,} labeled images", teacher)],
        "budget": f"student mlp [256, 256] with dropout 0.2 and 2-pixel jitter; {epochs} epochs over the "
        f"{n_train:,} training images (labeled-only baseline: {base_epochs} epochs over the {labeled:,}, "
        f"the same number of samples); no validation set (no labels beyond the {labeled:,})",
        "notes": f"Teacher trained on the {labeled:,} labeled images: {teacher['errors']} test errors. Noisy "
        f"Student kept {r1['unlabeled']['unlabeled_used']:,} pseudo-labels in round 1 and "
        f"{r2['unlabeled']['unlabeled_used']:,} in round 2.",
    }


ROWS = {"ensemble": ensemble, "semi_supervised": semi_supervised}
