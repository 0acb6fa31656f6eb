"""Joint training (Apprentice, Mishra & Marr 2018): teacher and student train together in one cohort.

One optimizer over both: teacher_ce_weight * CE(teacher) + beta * CE(student) + alpha * soft(student,
teacher). The teacher is not frozen; with `stop_teacher_gradient` the soft term sends it no gradient. The
teacher starts from the trained teacher when the plan has one (teacher phase or checkpoint), else from the
initial weights the teacher phase would use; the student starts like the scratch student. Both train with
distill.train, else student.train.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor

from kdkit.config import ExperimentConfig, ResponseLossConfig
from kdkit.errors import ConfigError
from kdkit.losses import response
from kdkit.objective import Objective, Term
from kdkit.plan import CohortMember, CohortPhase, ModelSource, ObjectivePlan, Phase
from kdkit.strategies.distill import response_loss, soft_kwargs
from kdkit.terms import term_spec


def check_cohort(cfg: ExperimentConfig) -> None:
    """Raise ConfigError for distill settings a cohort (joint or mutual) cannot honour."""
    kind, d = cfg.strategy.kind, cfg.distill
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


def joint_phases(cfg: ExperimentConfig, student_seed: int, has_teacher: bool) -> list[Phase]:
    """Return the cohort phase `joint` (roles teacher_joint and student_kd)."""
    check_cohort(cfg)
    s = cfg.strategy
    if s.stop_teacher_gradient and s.teacher_ce_weight == 0:
        raise ConfigError(
            "strategy.teacher_ce_weight: 0 with stop_teacher_gradient leaves the joint teacher without any "
            "gradient; give its cross-entropy a weight > 0"
        )
    assert cfg.teacher.model is not None
    train = cfg.distill_train()
    start = (
        ModelSource("teacher.model", copy_of="teacher")
        if has_teacher
        else ModelSource("teacher.model", cfg.teacher.model, seed=cfg.seed)
    )
    student = ModelSource("student.model", cfg.student.model, seed=student_seed)
    members = (
        CohortMember("teacher", "teacher_joint", cfg.teacher.model, start),
        CohortMember("student", "student_kd", cfg.student.model, student),
    )
    objective = ObjectivePlan(
        "joint",
        train.label_smoothing,
        response=response_loss(cfg),
        teacher_ce_weight=s.teacher_ce_weight,
        stop_teacher_gradient=s.stop_teacher_gradient,
    )
    record = {
        "strategy": "joint",
        "stop_teacher_gradient": s.stop_teacher_gradient,
        "teacher_start": "trained teacher" if has_teacher else "initialisation",
    }
    return [CohortPhase("joint", members, "student", objective, train, student_seed, record)]


def _detach_target(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """Return fn with its second argument (the target logits) detached: no gradient flows into the target."""

    def soft_detached(s: Tensor, t: Tensor, **kw: Any) -> Tensor:
        return fn(s, t.detach(), **kw)

    return soft_detached


def joint_objective(
    d: ResponseLossConfig, teacher_ce_weight: float, stop_teacher_gradient: bool, label_smoothing: float = 0.0
) -> Objective:
    """Return the joint (Apprentice) objective over `teacher.logits` and `student.logits`, both trainable."""
    soft_fn = term_spec(d.loss).fn
    ce_kwargs = {"label_smoothing": label_smoothing}
    terms = []
    if teacher_ce_weight:
        terms.append(
            Term(
                "teacher_ce",
                response.cross_entropy,
                ("teacher.logits", "labels"),
                teacher_ce_weight,
                ce_kwargs,
            )
        )
    if d.alpha:
        fn = _detach_target(soft_fn) if stop_teacher_gradient else soft_fn
        terms.append(Term(d.loss, fn, ("student.logits", "teacher.logits"), d.alpha, soft_kwargs(d)))
    if d.beta:
        terms.append(
            Term("ce", response.cross_entropy, ("student.logits", "labels"), d.beta, dict(ce_kwargs))
        )
    return Objective(terms)
