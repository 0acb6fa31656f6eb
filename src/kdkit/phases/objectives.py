"""The objective of a phase from its plan: hard labels, a response loss, or a cohort's joint/mutual loss."""

from __future__ import annotations

from kdkit.objective import Objective
from kdkit.plan import ObjectivePlan
from kdkit.strategies import joint_objective, mutual_objective


def objective_of(plan: ObjectivePlan) -> Objective:
    """Return the objective an ObjectivePlan describes (custom terms are built by the distill phase)."""
    ls, r = plan.label_smoothing, plan.response
    if plan.kind == "hard_labels":
        return Objective.hard_labels(ls)
    assert r is not None, f"objective {plan.kind!r} needs a response loss"
    if plan.kind == "response":
        return Objective.response(r.loss, r.alpha, r.beta, r.temperature, r.mix, ls)
    if plan.kind == "joint":
        return joint_objective(r, plan.teacher_ce_weight, plan.stop_teacher_gradient, ls)
    if plan.kind == "mutual":
        return mutual_objective(r, list(plan.members), ls)
    raise ValueError(
        f"objective {plan.kind!r} is built from the models of its phase, not from the plan alone"
    )
