"""Distillation strategies: who teaches whom and when, as configuration over the one engine.

The distill section says what is matched (loss, temperature, alpha, beta); `strategy.kind` says who teaches:

- offline: a trained, frozen teacher teaches the student (`_PhaseRunner.distill`).
- joint: teacher and student train together from the start in one `Cohort` with one optimizer (Apprentice,
  Mishra & Marr 2018): teacher_ce_weight * CE(teacher) + beta * CE(student) + alpha * soft(student, teacher).
  The teacher is not frozen; with `stop_teacher_gradient` the soft term sends it no gradient.
- mutual: peers in one `Cohort` (DML, Zhang et al. 2018); peer i minimises
  beta * CE(i) + alpha * mean over j != i of soft(i, j), with peer j's logits detached. With loss kd at
  temperature 1, soft(i, j) is KL(p_j || p_i).
- born_again: generations of the teacher's architecture, generation k distilled from generation k - 1, the
  teacher being generation 0 (Furlanello et al. 2018).
- takd: teacher -> assistant -> student, the student taught by the assistant only (Mirzadeh et al. 2020).

Joint and mutual training run through `Engine.fit` like any phase (optimizer, schedule, checkpoints, resume,
non-finite guard); born-again and TAKD are sequences of ordinary distillation phases with their own names,
so a resumed run skips the finished ones.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch import Tensor, nn

from kdkit.cohort import Cohort
from kdkit.config import ExperimentConfig, ModelSpec, ResponseLossConfig, TrainConfig
from kdkit.data.loader import Augment
from kdkit.errors import ConfigError
from kdkit.losses import response
from kdkit.losses.objective import RESPONSE_LOSSES, Objective, Term
from kdkit.runtime import seed_everything
from kdkit.steps import CohortStep

if TYPE_CHECKING:
    from kdkit.experiment import _PhaseRunner

# Strategy kinds whose distill phase starts from a trained teacher (teacher phase or teacher.checkpoint).
TRAINED_TEACHER_KINDS = ("offline", "born_again", "takd")


def needs_trained_teacher(cfg: ExperimentConfig) -> bool:
    """Return True when the distill phase of this config needs a trained teacher first."""
    return cfg.strategy.kind in TRAINED_TEACHER_KINDS


def check_strategy(cfg: ExperimentConfig) -> None:
    """Raise ConfigError for settings the chosen strategy cannot honour (checked before any training)."""
    kind, d = cfg.strategy.kind, cfg.distill
    if kind in ("joint", "mutual"):
        who = "teacher" if kind == "joint" else "peers"
        if d.terms:
            raise ConfigError(
                f"distill.terms: strategy.kind {kind!r} trains with a response loss (distill.loss, temperature, "
                "alpha, beta); custom terms need strategy.kind 'offline'"
            )
        if d.teacher_outputs not in ("auto", "online"):
            raise ConfigError(
                f"distill.teacher_outputs: {d.teacher_outputs!r} stores fixed outputs, but under strategy.kind "
                f"{kind!r} the {who} change every step; use 'auto' or 'online'"
            )
        if d.omit_classes or d.class_bias:
            raise ConfigError(
                f"distill.omit_classes / distill.class_bias apply to a student distilled from a fixed teacher; "
                f"strategy.kind {kind!r} trains every model on the full training set (remove them)"
            )
    if kind != "offline" and cfg.teacher.ensemble:
        raise ConfigError(
            f"teacher.ensemble: strategy.kind {kind!r} trains or copies one teacher network; an ensemble teaches "
            "only with strategy.kind 'offline'"
        )
    if kind != "offline" and (cfg.data.labeled_fraction is not None or cfg.data.labeled_count is not None):
        raise ConfigError(
            f"data.labeled_fraction / data.labeled_count: unlabeled transfer sets are taught offline "
            f"(kdkit.transfer); strategy.kind {kind!r} needs every label (remove them or use 'offline')"
        )
    if kind == "joint" and cfg.strategy.stop_teacher_gradient and cfg.strategy.teacher_ce_weight == 0:
        raise ConfigError(
            "strategy.teacher_ce_weight: 0 with stop_teacher_gradient leaves the joint teacher without any "
            "gradient; give its cross-entropy a weight > 0"
        )
    if cfg.compress is not None and kind not in ("offline", "takd"):
        raise ConfigError(
            f"compress: it re-distills student_kd from the teacher checkpoint; strategy.kind {kind!r} "
            "does not produce that pair (remove compress or use kind offline/takd)"
        )


def run_strategy(runner: _PhaseRunner, teacher: nn.Module | None, *, seed: int) -> None:
    """Run the distill phase of the configured strategy; every model it trains is recorded by the runner."""
    kind = runner.cfg.strategy.kind
    if kind == "joint":
        run_joint(runner, teacher, seed=seed)
    elif kind == "mutual":
        run_mutual(runner, seed=seed)
    else:
        if teacher is None:
            raise ConfigError(f"strategy.kind {kind!r} needs a trained teacher: add 'teacher' to phases")
        if kind == "born_again":
            run_born_again(runner, teacher)
        elif kind == "takd":
            run_takd(runner, teacher, seed=seed)
        else:
            # Offline: one frozen teacher (or ensemble), with the transfer-set options of kdkit.transfer.
            from kdkit.transfer import run_distill

            run_distill(runner, teacher, seed=seed)


# --- objectives ------------------------------------------------------------------------------------------


def _soft_kwargs(d: ResponseLossConfig) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    if d.loss in ("kd", "kd_mse_mix"):
        kwargs["temperature"] = d.temperature
    if d.loss == "kd_mse_mix":
        kwargs["mix"] = d.mix
    return kwargs


def _detach_target(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """Return fn with its second argument (the target logits) detached: no gradient flows into the target."""

    def soft_detached(s: Tensor, t: Tensor, **kw: Any) -> Tensor:
        return fn(s, t.detach(), **kw)

    return soft_detached


def _mean_over_peers(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """Return a loss of (own, *others): the mean of fn(own, other) with every other's logits detached."""

    def mean_to_peers(own: Tensor, *others: Tensor, **kw: Any) -> Tensor:
        total = fn(own, others[0].detach(), **kw)
        for other in others[1:]:
            total = total + fn(own, other.detach(), **kw)
        return total / len(others)

    return mean_to_peers


def joint_objective(
    d: ResponseLossConfig, teacher_ce_weight: float, stop_teacher_gradient: bool, label_smoothing: float = 0.0
) -> Objective:
    """Return the joint (Apprentice) objective over `teacher.logits` and `student.logits`, both trainable."""
    soft_fn = RESPONSE_LOSSES[d.loss][0]
    terms = []
    if teacher_ce_weight:
        terms.append(
            Term(
                "teacher_ce",
                response.cross_entropy,
                ("teacher.logits", "labels"),
                teacher_ce_weight,
                {"label_smoothing": label_smoothing},
            )
        )
    if d.alpha:
        fn = _detach_target(soft_fn) if stop_teacher_gradient else soft_fn
        terms.append(Term(d.loss, fn, ("student.logits", "teacher.logits"), d.alpha, _soft_kwargs(d)))
    if d.beta:
        terms.append(
            Term(
                "ce",
                response.cross_entropy,
                ("student.logits", "labels"),
                d.beta,
                {"label_smoothing": label_smoothing},
            )
        )
    return Objective(terms)


def mutual_objective(d: ResponseLossConfig, names: list[str], label_smoothing: float = 0.0) -> Objective:
    """Return the DML objective: per peer, beta * CE + alpha * mean soft loss to the other (detached) peers."""
    soft = _mean_over_peers(RESPONSE_LOSSES[d.loss][0])
    terms = []
    for name in names:
        own = f"{name}.logits"
        if d.beta:
            terms.append(
                Term(
                    f"ce.{name}",
                    response.cross_entropy,
                    (own, "labels"),
                    d.beta,
                    {"label_smoothing": label_smoothing},
                )
            )
        if d.alpha:
            others = tuple(f"{o}.logits" for o in names if o != name)
            terms.append(Term(f"{d.loss}.{name}", soft, (own, *others), d.alpha, _soft_kwargs(d)))
    return Objective(terms)


# --- cohorts (joint, mutual) -----------------------------------------------------------------------------


@dataclass
class Member:
    """One model of a cohort: its name in the cohort, its role in the run, its spec and how to build it."""

    name: str
    role: str
    spec: ModelSpec
    build: Callable[[], nn.Module]


def train_cohort(
    runner: _PhaseRunner,
    phase: str,
    members: list[Member],
    primary: str,
    objective: Objective,
    tcfg: TrainConfig,
    *,
    seed: int,
    record: dict[str, Any],
) -> dict[str, nn.Module]:
    """Train the members together as one phase of the engine; evaluate, record and save each of them."""
    if runner.resume and all((runner.ckpt_dir / f"{m.role}.json").is_file() for m in members):
        loaded = {m.name: runner.finished(m.role) for m in members}
        return {k: v for k, v in loaded.items() if v is not None}
    cohort = Cohort({m.name: m.build() for m in members}, primary)  # built in order: each seeds itself
    bundle = runner.bundle
    from kdkit.experiment import make_loader  # lazy: experiment imports this module at run time

    loader = make_loader(
        bundle.train,
        bundle,
        tcfg.batch_size,
        train=True,
        seed=seed,
        augment=Augment(**tcfg.augment.model_dump()),
        channels_last=runner.cl,
    )
    fit = runner.engine.fit(
        phase,
        cohort,
        objective,
        loader,
        tcfg,
        steps=CohortStep(cohort),
        val_loader=runner.val_loader,
        checkpoint=runner.policy(),
    )
    trained = fit.model
    assert isinstance(trained, Cohort)
    roles = [m.role for m in members]
    for m in members:
        together = [r for r in roles if r != m.role]
        runner.finish(
            m.role, trained.members[m.name], m.spec, fit, **record, trained_with=together, phase=phase
        )
    return dict(trained.members.items())


def _builder(runner: _PhaseRunner, spec: ModelSpec, field: str, seed: int) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        from kdkit.experiment import build_model

        seed_everything(seed)  # the same initial weights as an ordinary phase with this seed
        return build_model(spec, *runner.dims, field=field)

    return build


def run_joint(runner: _PhaseRunner, teacher: nn.Module | None, *, seed: int) -> dict[str, nn.Module]:
    """Train teacher and student together (phase `joint`; roles `teacher_joint` and `student_kd`).

    The teacher starts from the trained teacher when there is one (teacher phase or checkpoint), else from
    the initial weights the teacher phase would use; the student starts like the scratch student. Both
    train with distill.train, else student.train (one optimizer over both).
    """
    cfg, s = runner.cfg, runner.cfg.strategy
    tcfg = cfg.distill_train()
    if teacher is not None:
        start = teacher

        def build_teacher() -> nn.Module:
            model = copy.deepcopy(start)
            for p in model.parameters():
                p.requires_grad_(True)
            return model.train()

    else:
        build_teacher = _builder(runner, cfg.teacher.model, "teacher.model", cfg.seed)
    members = [
        Member("teacher", "teacher_joint", cfg.teacher.model, build_teacher),
        Member(
            "student",
            "student_kd",
            cfg.student.model,
            _builder(runner, cfg.student.model, "student.model", seed),
        ),
    ]
    objective = joint_objective(
        cfg.distill, s.teacher_ce_weight, s.stop_teacher_gradient, tcfg.label_smoothing
    )
    record = {
        "strategy": "joint",
        "stop_teacher_gradient": s.stop_teacher_gradient,
        "teacher_start": "trained teacher" if teacher is not None else "initialisation",
    }
    return train_cohort(runner, "joint", members, "student", objective, tcfg, seed=seed, record=record)


def run_mutual(runner: _PhaseRunner, *, seed: int) -> dict[str, nn.Module]:
    """Train the peers by deep mutual learning (phase `mutual`; roles `peer_1` ... `peer_K`).

    Peer k starts from the weights of seed `seed + k - 1` (peer 1 like the scratch student); all peers see
    the same batches; they train with distill.train, else student.train.
    """
    cfg, s = runner.cfg, runner.cfg.strategy
    tcfg = cfg.distill_train()
    specs = s.peer_specs(cfg.student.model)
    members = []
    for i, spec in enumerate(specs):
        field = f"strategy.peers.{i}" if s.peers is not None else "student.model"
        name = f"peer_{i + 1}"
        members.append(Member(name, name, spec, _builder(runner, spec, field, seed + i)))
    objective = mutual_objective(cfg.distill, [m.name for m in members], tcfg.label_smoothing)
    return train_cohort(
        runner, "mutual", members, "peer_1", objective, tcfg, seed=seed, record={"strategy": "mutual"}
    )


# --- sequences of distillation phases (born-again, TAKD) ---------------------------------------------------


def run_born_again(runner: _PhaseRunner, teacher: nn.Module) -> list[nn.Module]:
    """Distill generations 1..G of the teacher's architecture, each from the one before (roles born_again_k).

    Each generation trains with distill.train, else teacher.train (the budget of generation 0), from the
    initial weights of seed `cfg.seed + k`.
    """
    cfg = runner.cfg
    tcfg = cfg.distill.train or cfg.teacher.train
    models, prev, prev_role = [], teacher, "teacher"
    for k in range(1, cfg.strategy.generations + 1):
        role = f"born_again_{k}"
        prev = runner.distill(
            prev,
            seed=cfg.seed + k,
            role=role,
            spec=cfg.teacher.model,
            field="teacher.model",
            tcfg=tcfg,
            record={"strategy": "born_again", "generation": k, "taught_by": prev_role},
        )
        models.append(prev)
        prev_role = role
    return models


def _load_assistant(runner: _PhaseRunner, path: str) -> nn.Module:
    return runner.load_trained(path, "assistant", "strategy.assistant.checkpoint")


def run_takd(runner: _PhaseRunner, teacher: nn.Module, *, seed: int) -> nn.Module:
    """Distill the assistant from the teacher, then the student (role student_kd) from the assistant only."""
    cfg = runner.cfg
    a = cfg.strategy.assistant
    assert a is not None  # the config requires it for takd
    if a.checkpoint:
        assistant = _load_assistant(runner, a.checkpoint)
    else:
        assistant = runner.distill(
            teacher,
            seed=cfg.seed + 2,
            role="assistant",
            spec=a.model,
            field="strategy.assistant.model",
            tcfg=a.train,
            record={"strategy": "takd", "taught_by": "teacher"},
        )
    return runner.distill(assistant, seed=seed, record={"strategy": "takd", "taught_by": "assistant"})
