"""Teacher strategies over the one engine: teacher ensembles, relabelled copies, unlabeled transfer sets.

Hooks called by `run_experiment`:
- `build_ensemble`: train or load the members of `teacher.ensemble` and return an `EnsembleTeacher`;
- `run_distill`: the distillation phase, dispatched to plain distillation, `relabel` (every teacher labels
  the transfer set and augmented copies of it) or unlabeled data (Noisy Student rounds).

Each strategy builds a transfer set (images, labels, fixed teacher logits) and trains through
`_PhaseRunner.distill`, i.e. through `Engine.fit`, with its checkpoints and resume.

Unlabeled images carry the label `UNLABELED` (-1) from the moment the data is loaded: with soft targets
their cross-entropy is masked out (`masked_cross_entropy`), with hard targets the label is the teacher's argmax.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch import Tensor, nn

from kdkit.config import EnsembleConfig, ExperimentConfig, UnlabeledConfig
from kdkit.data.loader import Augment, InMemoryLoader, apply_params, augment_draws
from kdkit.data.sources import ArrayDataset
from kdkit.data.splits import UNLABELED, omit_classes
from kdkit.ensemble import EnsembleTeacher, normalized_weights
from kdkit.errors import ConfigError, ModelError
from kdkit.losses import response
from kdkit.objective import Objective
from kdkit.teacher import FrozenTeacher

if TYPE_CHECKING:
    from kdkit.experiment import _PhaseRunner


class TeacherLabelSmoothingWarning(UserWarning):
    """The teacher was trained with label smoothing, which erases what distillation transfers."""


SMOOTHING_REASON = (
    "label smoothing pulls a network's logits of all wrong classes towards one value, erasing the relative "
    "information between wrong classes that distillation transfers (Mueller, Kornblith & Hinton 2019, "
    "'When does label smoothing help?'); expect a weaker student, or train the teacher without it"
)


def warn_label_smoothing(where: str, value: float | None) -> bool:
    """Warn (not fail) when a teacher was trained with label smoothing; return True when it warned."""
    if not value:
        return False
    msg = f"{where} was trained with label smoothing {value:g}: {SMOOTHING_REASON}"
    warnings.warn(msg, TeacherLabelSmoothingWarning, stacklevel=2)
    return True


def checkpoint_label_smoothing(path: str | Path) -> float | None:
    """Return the label smoothing a kdkit checkpoint's model was trained with, if kdkit trained it.

    Read from the checkpoint's JSON (`metrics.label_smoothing`), else from the run's config.yaml beside the
    checkpoints folder and the checkpoint's role; None when unknown (e.g. a model kdkit did not train).
    """
    base = Path(path)
    js = (base.with_suffix("") if base.suffix in (".safetensors", ".json") else base).with_suffix(".json")
    try:
        meta = json.loads(js.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    metrics = meta.get("metrics") or {}
    if metrics.get("label_smoothing") is not None:
        return float(metrics["label_smoothing"])
    if metrics.get("loaded_from"):
        return None  # a loaded model: its own training is recorded (or not) at its source
    run_cfg = js.parent.parent / "config.yaml"
    try:
        cfg = yaml.safe_load(run_cfg.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return None
    role = str(meta.get("role", ""))
    try:
        if role == "teacher":
            train = cfg["teacher"]["train"]
        elif role.startswith("teacher_"):
            train = cfg["teacher"]["ensemble"][int(role.split("_", 1)[1])]["train"]
        elif role == "student_scratch":
            train = cfg["student"]["train"]
        elif role.startswith("student_kd"):
            train = (cfg.get("distill") or {}).get("train") or cfg["student"]["train"]
        else:
            return None
        return float(train.get("label_smoothing", 0.0))
    except (KeyError, IndexError, TypeError, ValueError):
        return None


def masked_cross_entropy(logits: Tensor, labels: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Return the cross-entropy averaged over labeled samples only (labels < 0 are unlabeled; 0 if none).

    No host sync: a batch without any labeled sample contributes a zero loss.
    """
    valid = labels >= 0
    per = F.cross_entropy(
        logits.float(), labels.clamp_min(0), reduction="none", label_smoothing=label_smoothing
    )
    return (per * valid).sum() / valid.sum().clamp_min(1)


def mask_unlabeled(objective: Objective, field: str = "distill") -> Objective:
    """Make the objective's cross-entropy terms skip unlabeled samples; refuse other terms that read labels."""
    for i, term in enumerate(objective.terms):
        if "labels" not in term.inputs:
            continue
        if term.fn is response.cross_entropy:
            term.fn = masked_cross_entropy
        elif term.fn is not masked_cross_entropy:
            raise ConfigError(
                f"{field}: loss term {i} ({term.name!r}) reads labels, which unlabeled images do not have; "
                "use distill.unlabeled.targets: hard (teacher pseudo-labels) or remove the term"
            )
    return objective


def freeze(runner: _PhaseRunner, model: nn.Module) -> nn.Module:
    """Return a model ready to teach: on the run's device, frozen, in eval mode (ensembles already are)."""
    model = runner.engine.prepare(model)
    if isinstance(model, (FrozenTeacher, EnsembleTeacher)):
        return model
    return FrozenTeacher(model, dtype=runner.engine.runtime.amp_dtype)


def _plain_loader(runner: _PhaseRunner, images: np.ndarray | Tensor) -> InMemoryLoader:
    n = len(images)
    return InMemoryLoader(
        images,
        torch.zeros(n, dtype=torch.long),  # labels are never read here
        runner.cfg.runtime.eval_batch_size,
        mean=runner.bundle.mean,
        std=runner.bundle.std,
        channels_last=runner.cl,
    )


def teacher_logits(runner: _PhaseRunner, teacher: nn.Module, images: np.ndarray | Tensor) -> Tensor:
    """Return the teacher's logits (CPU fp32) for uint8 images, in order, without augmentation."""
    return runner.engine.predict_logits(teacher, _plain_loader(runner, images))


# ----------------------------------------------------------------------------------------------- ensembles


def load_member(runner: _PhaseRunner, i: int, path: str) -> nn.Module:
    """Return ensemble member i loaded from a checkpoint, checked to predict the data set's classes."""
    from kdkit.config import ModelSpec
    from kdkit.experiment import load_model

    model, meta = load_model(path)
    classes = list(meta.get("classes") or [])
    want = list(runner.bundle.train.classes)
    if meta["num_classes"] != len(want) or (classes and classes != want):
        raise ModelError(
            f"teacher.ensemble[{i}].checkpoint {path!r} predicts {meta['num_classes']} classes "
            f"({', '.join(classes[:12]) or 'names unknown'}) but {runner.cfg.data.dataset} has {len(want)} "
            f"({', '.join(want[:12])}): every teacher of an ensemble must predict the data set's classes"
        )
    model = runner.engine.prepare(model)
    runner.finish(
        f"teacher_{i}",
        model,
        ModelSpec.model_validate(meta["model"]),
        None,
        loaded_from=path,
        label_smoothing=checkpoint_label_smoothing(path),
        **runner.check_split(meta, f"teacher.ensemble[{i}].checkpoint", path),
    )
    return model


def build_ensemble(runner: _PhaseRunner, seed: int) -> EnsembleTeacher:
    """Train or load every member of `teacher.ensemble`; record each, and the ensemble as `teacher`."""
    from kdkit.experiment import _eval_record

    cfg = runner.cfg
    members_cfg = cfg.teacher.ensemble or []
    distilling = "distill" in cfg.phases
    members: list[nn.Module] = []
    for i, m in enumerate(members_cfg):
        role = f"teacher_{i}"
        if m.checkpoint:
            model = load_member(runner, i, m.checkpoint)
            smoothing = runner.records[role].get("label_smoothing")
        elif "teacher" in cfg.phases:
            assert m.model is not None
            model = runner.train(
                role,
                m.model,
                f"teacher.ensemble[{i}].model",
                Objective.hard_labels(m.train.label_smoothing),
                m.train,
                runner.bundle.train,
                seed=cfg.seed + 1000 * i,  # member 0 starts like a single teacher of the same config
                record={"label_smoothing": m.train.label_smoothing},
            )
            smoothing = m.train.label_smoothing
        else:
            raise ConfigError(
                f"teacher.ensemble[{i}] has no checkpoint and 'teacher' is not in phases: nothing to load or train"
            )
        if distilling:
            warn_label_smoothing(f"teacher.ensemble[{i}]", smoothing)
        members.append(model)
    e = cfg.distill.ensemble or EnsembleConfig()
    val_acc = [runner.records[f"teacher_{i}"]["val_accuracy"] for i in range(len(members))]
    weights = normalized_weights(e.weights, val_acc)
    ens = EnsembleTeacher(
        members,
        weights,
        mode="random" if e.mode == "random" else "average",
        temperature=cfg.distill.temperature,
        seed=seed,
        dtype=runner.engine.runtime.amp_dtype,
    )
    ens = runner.engine.prepare(ens)
    # The ensemble's own accuracy: the weighted mean of the members' probabilities (T = 1).
    judge = runner.engine.prepare(ens.averaged(1.0))
    val = runner.engine.evaluate(judge, runner.val_loader, runner.bundle.num_classes)
    test = runner.engine.evaluate(judge, runner.test_loader, runner.bundle.num_classes)
    rec = _eval_record(judge, None, val, test)
    rec["train_seconds"] = round(
        sum(runner.records[f"teacher_{i}"]["train_seconds"] for i in range(len(members))), 3
    )
    rec["ensemble"] = {
        "mode": e.mode,
        "weights": [round(w, 6) for w in weights],
        "weights_from": e.weights if isinstance(e.weights, str) else "given",
        "members": [f"teacher_{i}" for i in range(len(members))],
    }
    runner.records["teacher"] = rec
    return ens


def relabel_transfer_set(
    runner: _PhaseRunner, ens: EnsembleTeacher, data: ArrayDataset, ecfg: EnsembleConfig, seed: int
) -> tuple[ArrayDataset, Tensor, dict[str, Any]]:
    """Return the relabelled transfer set: for every teacher, the images and `relabel_copies` augmented copies
    of them, each view labelled by that teacher's logits (Fukuda et al.'s "multiple streams of teacher
    distributions via data augmentation"). True labels are kept for the cross-entropy term.
    """
    aug = Augment(**ecfg.augment.model_dump())
    images = torch.as_tensor(data.images)
    n, k = len(images), ecfg.relabel_copies
    views: list[Tensor] = []
    logits: list[Tensor] = []
    for m, member in enumerate(ens.members):
        member_views = [images]
        if k:
            draws = augment_draws(n, k, aug, seed * 7919 + m)
            for c in range(k):
                chunks = [
                    apply_params(images[s : s + 4096], aug, draws[s : s + 4096, c]) for s in range(0, n, 4096)
                ]
                member_views.append(torch.cat(chunks))
        for v in member_views:
            views.append(v)
            logits.append(teacher_logits(runner, member, v))
    out = ArrayDataset(
        torch.cat(views).numpy(),
        np.tile(data.labels, len(views)),
        list(data.classes),
        name=f"{data.name}:relabel{len(ens.members)}x{1 + k}",
    )
    info = {"relabel": {"copies": k, "teachers": len(ens.members), "views_per_image": len(views)}}
    return out, torch.cat(logits), info


# ------------------------------------------------------------------------------------------ unlabeled data


def label_unlabeled(logits: Tensor, u: UnlabeledConfig) -> tuple[Tensor, Tensor]:
    """Return (keep mask, labels) for unlabeled images from the teacher's logits.

    Images whose teacher confidence (max softmax probability) is below `threshold` are dropped; kept images get
    the teacher's argmax as label (`hard`) or `UNLABELED` (`soft`: they learn from the teacher's outputs only).
    """
    prob = torch.softmax(logits.float(), dim=-1)
    conf, arg = prob.max(dim=-1)
    keep = conf >= u.threshold
    labels = arg if u.targets == "hard" else torch.full_like(arg, UNLABELED)
    return keep, labels


def unlabeled_transfer_set(
    labeled: ArrayDataset, hidden: ArrayDataset, logits: Tensor, u: UnlabeledConfig
) -> tuple[ArrayDataset, Tensor, dict[str, Any]]:
    """Return labeled + teacher-labelled unlabeled images, their fixed teacher logits, and counts.

    `logits` are the teacher's outputs for labeled then unlabeled images. The hidden labels are never read.
    """
    n_lab = len(labeled)
    keep, pseudo = label_unlabeled(logits[n_lab:], u)
    idx = torch.nonzero(keep).flatten().numpy()
    images = np.concatenate([labeled.images, hidden.images[idx]])
    labels = np.concatenate([labeled.labels, pseudo[idx].numpy().astype(np.int64)])
    tlogits = torch.cat([logits[:n_lab], logits[n_lab:][keep]])
    out = ArrayDataset(images, labels, list(labeled.classes), name=f"{labeled.name}+unlabeled")
    info = {
        "labeled": n_lab,
        "unlabeled_total": len(hidden),
        "unlabeled_used": len(idx),
        "targets": u.targets,
        "threshold": u.threshold,
    }
    return out, tlogits, info


def distill_unlabeled(runner: _PhaseRunner, teacher: nn.Module, seed: int) -> nn.Module:
    """Noisy Student: the teacher labels the unlabeled images (clean views), the student learns labeled +
    teacher-labelled images under its own augmentation and dropout; each round's student teaches the next.
    """
    u = runner.cfg.distill.unlabeled or UnlabeledConfig()
    labeled, hidden = runner.bundle.train, runner.bundle.unlabeled
    assert hidden is not None
    both = np.concatenate([labeled.images, hidden.images])
    current = teacher
    for r in range(1, u.rounds + 1):
        role = "student_kd" if r == u.rounds else f"student_kd_round{r}"
        done = runner.finished(role)
        if done is not None:
            current = done
            continue
        frozen = freeze(runner, current)
        logits = teacher_logits(runner, frozen, both)
        transfer, tlogits, info = unlabeled_transfer_set(labeled, hidden, logits, u)
        runner.engine.console.print(
            f"[{role}] round {r}/{u.rounds}: {info['labeled']} labeled + {info['unlabeled_used']} of "
            f"{info['unlabeled_total']} unlabeled images ({u.targets} targets)",
            highlight=False,
            markup=False,
        )
        current = runner.distill(
            frozen,
            seed=seed,
            role=role,
            transfer=transfer,
            teacher_logits=tlogits,
            record={"unlabeled": {**info, "round": r, "rounds": u.rounds}},
        )
    return current


# ------------------------------------------------------------------------------------------------- dispatch


def run_distill(runner: _PhaseRunner, teacher: nn.Module, seed: int) -> nn.Module:
    """Run the distillation phase with the configured strategy."""
    cfg: ExperimentConfig = runner.cfg
    if runner.bundle.unlabeled is not None:
        return distill_unlabeled(runner, teacher, seed)
    e = cfg.distill.ensemble
    if isinstance(teacher, EnsembleTeacher) and e is not None and e.mode == "relabel":
        if (done := runner.finished("student_kd")) is not None:
            return done
        transfer, logits, info = relabel_transfer_set(runner, teacher, runner.bundle.train, e, seed)
        return runner.distill(teacher, seed=seed, transfer=transfer, teacher_logits=logits, record=info)
    record: dict[str, Any] = {}
    if isinstance(teacher, EnsembleTeacher) and teacher.mode == "random":
        dcfg, train = cfg.distill_train(), runner.bundle.train
        n = len(omit_classes(train, cfg.distill.omit_classes)) if cfg.distill.omit_classes else len(train)
        steps = -(-n // dcfg.batch_size)
        record["ensemble"] = {"mode": "random", "batches_per_teacher": teacher.picks(dcfg.epochs, steps)}
    return runner.distill(teacher, seed=seed, record=record)
