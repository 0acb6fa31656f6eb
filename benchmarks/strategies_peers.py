"""Benchmark rows of the peer strategies on MNIST: joint, mutual learning, born-again, TAKD (issue #4, part B).

Each row function runs its strategy and its plain baseline on the same budget with ordinary `kdkit` runs
(`run_experiment` on a config dict) and returns

    {"rows": [{"label", "test_errors", "test_accuracy", "seconds", ...}, ...],
     "baseline": "<label of the baseline row>", "notes": "..."}

`seconds` is the training time of the phase that produced the model (for joint and mutual rows: the one
phase that trains the whole cohort); teachers' training time is listed in their own rows. The driver
(benchmarks/strategies.py) collects `ROWS`; `args.quick` shrinks every row to a smoke run (3,000 images,
3 epochs) and `args.data_root` is the directory holding mnist/.

Fixed in advance, nothing selected on the test set, last epoch reported: all 60,000 training images
(val_size 0), SGD with momentum 0.9, lr 0.05, cosine schedule, batch 128, the seed of `args.seed` (the driver's
`--seeds`). On MNIST a difference of ~15 test errors between two single-seed runs is within seed noise.
"""

from __future__ import annotations

import argparse
import copy
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console

from kdkit.config import build_config
from kdkit.experiment import run_experiment

EPOCHS = 12  # every model of every row trains this many epochs (quick: 3)
TEACHER = {"name": "mlp", "hidden": [256, 256]}
STUDENT = {"name": "mlp", "hidden": [32]}
# Hinton et al.'s response KD for offline, joint, born-again and TAKD; DML's own recipe for mutual learning.
KD = {"loss": "kd", "temperature": 4.0, "alpha": 0.9, "beta": 0.1}
DML = {"loss": "kd", "temperature": 1.0, "alpha": 1.0, "beta": 1.0}


def _train(quick: bool) -> dict[str, Any]:
    return {
        "epochs": 3 if quick else EPOCHS,
        "batch_size": 128,
        "optimizer": "sgd",
        "lr": 0.05,
        "momentum": 0.9,
        "schedule": "cosine",
    }


def _config(args: argparse.Namespace, name: str, **sections: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"dataset": "mnist", "val_size": 0}
    if getattr(args, "data_root", None):  # else kdkit's default ($KDKIT_DATA)
        data["root"] = str(args.data_root)
    if args.quick:
        data["train_limit"] = 3000
    raw: dict[str, Any] = {
        "name": name,
        "seed": args.seed,
        "data": data,
        "teacher": {"model": TEACHER, "train": _train(args.quick)},
        "student": {"model": STUDENT, "train": _train(args.quick)},
        "distill": dict(KD),
        "runtime": {"progress": False, "tensorboard": False, "log_every": 100000},
    }
    raw.update(copy.deepcopy(sections))
    return raw


def _run(raw: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """Run one kdkit experiment (replacing an earlier one in run_dir) and return its summary."""
    return run_experiment(build_config(raw), run_dir, overwrite=True, console=Console(file=io.StringIO()))


def _row(label: str, rec: dict[str, Any], role: str, **extra: Any) -> dict[str, Any]:
    return {
        "label": label,
        "test_errors": int(rec["errors"]),
        "test_accuracy": float(rec["accuracy"]),
        "seconds": float(rec["train_seconds"]),
        "role": role,
        "params": int(rec["params"]),
        **extra,
    }


def joint_vs_offline(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Student [32]: scratch, offline KD from a trained [256, 256] teacher, joint training (with/without stop)."""
    off = _run(_config(args, "offline", phases=["teacher", "scratch", "distill"]), workdir / "offline")
    rows = [
        _row("student, scratch (baseline)", off["models"]["student_scratch"], "student_scratch"),
        _row("teacher, trained alone", off["models"]["teacher"], "teacher"),
        _row("student, offline KD (frozen teacher)", off["models"]["student_kd"], "student_kd"),
    ]
    for stop in (False, True):
        name = "joint-stop" if stop else "joint"
        strategy: dict[str, Any] = {"kind": "joint"}
        if stop:
            strategy["stop_teacher_gradient"] = True
        s = _run(_config(args, name, phases=["distill"], strategy=strategy), workdir / name)
        how = "joint, stop-gradient" if stop else "joint"
        rows.append(_row(f"teacher, {how}", s["models"]["teacher_joint"], "teacher_joint"))
        rows.append(_row(f"student, {how}", s["models"]["student_kd"], "student_kd"))
    return {
        "rows": rows,
        "baseline": rows[0]["label"],
        "notes": (
            f"MLP 784-256-256-10 teacher, 784-32-10 student, {_train(args.quick)['epochs']} epochs each. "
            "Offline KD trains the teacher first (its own row), then the student; joint training trains both "
            "from their initial weights in one phase with 1.0 * CE(teacher) + 0.9 * KD(T=4) + 0.1 * CE(student) "
            "(Apprentice; stop-gradient: the KD term sends the teacher no gradient). All students start from "
            "the same weights and see the same batches."
        ),
    }


def mutual_vs_independent(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Two 784-64-10 peers: deep mutual learning vs the same two peers trained independently."""
    peers = {"kind": "mutual", "peers": [{"name": "mlp", "hidden": [64]}, {"name": "mlp", "hidden": [64]}]}
    rows = []
    for name, distill in (("independent", {**DML, "alpha": 0.0}), ("dml", DML)):
        s = _run(_config(args, name, phases=["distill"], strategy=peers, distill=distill), workdir / name)
        how = "independent (baseline)" if name == "independent" else "mutual learning"
        for p in ("peer_1", "peer_2"):
            rows.append(_row(f"{p}, {how}", s["models"][p], p))
    return {
        "rows": rows,
        "baseline": rows[0]["label"],
        "notes": (
            "Two 784-64-10 peers from different initial weights, the same batches. Mutual learning: each peer "
            "minimises CE + mean KL(p_other || p_self) with the other's predictions detached (DML, T=1). "
            "Independent: the same run with the KL weight 0, so each peer trains exactly as it would alone."
        ),
    }


def born_again(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Born-again networks: a 784-128-10 MLP trained plainly (gen 0), then 3 generations each taught by the last."""
    gens = 3
    teacher = {"model": {"name": "mlp", "hidden": [128]}, "train": _train(args.quick)}
    s = _run(
        _config(
            args,
            "born-again",
            phases=["teacher", "distill"],
            teacher=teacher,
            strategy={"kind": "born_again", "generations": gens},
        ),
        workdir / "born-again",
    )
    rows = [_row("gen 0, plain training (baseline)", s["models"]["teacher"], "teacher", generation=0)]
    for k in range(1, gens + 1):
        rec = s["models"][f"born_again_{k}"]
        rows.append(_row(f"gen {k}, taught by gen {k - 1}", rec, f"born_again_{k}", generation=k))
    return {
        "rows": rows,
        "baseline": rows[0]["label"],
        "notes": (
            "Every generation is the same 784-128-10 MLP with the same budget; generation k is distilled from "
            "generation k-1 (KD, T=4, alpha 0.9, beta 0.1), from its own initial weights."
        ),
    }


def takd_vs_direct(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """A 784-16-10 student: scratch, KD directly from the [256, 256] teacher, KD through a [64] assistant."""
    small = {"name": "mlp", "hidden": [16]}
    student = {"model": small, "train": _train(args.quick)}
    direct = _run(
        _config(args, "direct", phases=["teacher", "scratch", "distill"], student=student), workdir / "direct"
    )
    teacher_ckpt = str(workdir / "direct" / "checkpoints" / "teacher")
    assistant = {"model": {"name": "mlp", "hidden": [64]}, "train": _train(args.quick)}
    ta = _run(
        _config(
            args,
            "takd",
            phases=["distill"],
            teacher={"model": TEACHER, "checkpoint": teacher_ckpt},
            student=student,
            strategy={"kind": "takd", "assistant": assistant},
        ),
        workdir / "takd",
    )
    rows = [
        _row("student, scratch", direct["models"]["student_scratch"], "student_scratch"),
        _row("student, KD from the teacher (baseline)", direct["models"]["student_kd"], "student_kd"),
        _row("teacher", direct["models"]["teacher"], "teacher"),
        _row("assistant, KD from the teacher", ta["models"]["assistant"], "assistant"),
        _row("student, KD from the assistant (TAKD)", ta["models"]["student_kd"], "student_kd"),
    ]
    return {
        "rows": rows,
        "baseline": rows[1]["label"],
        "notes": (
            "Teacher 784-256-256-10, assistant 784-64-10, student 784-16-10; the TAKD run reuses the direct "
            "run's teacher checkpoint. Both distilled students start from the same weights (KD, T=4)."
        ),
    }


ROWS: dict[str, Callable[[argparse.Namespace, Path], dict[str, Any]]] = {
    "joint_vs_offline": joint_vs_offline,
    "mutual_vs_independent": mutual_vs_independent,
    "born_again": born_again,
    "takd_vs_direct": takd_vs_direct,
}
