"""Run a plan: each phase, in order, by the handler of its kind; results flow forward in the run context."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kdkit.phases.cohort import run_cohort
from kdkit.phases.context import RunContext
from kdkit.phases.distill import run_distill
from kdkit.phases.ensemble import run_ensemble
from kdkit.phases.load import run_load
from kdkit.phases.train import run_train
from kdkit.plan import CohortPhase, DistillPhase, EnsemblePhase, LoadPhase, Phase, Plan, TrainPhase

HANDLERS: dict[type, Callable[[Any, RunContext], None]] = {
    TrainPhase: run_train,
    LoadPhase: run_load,
    EnsemblePhase: run_ensemble,
    DistillPhase: run_distill,
    CohortPhase: run_cohort,
}


def run_phase(phase: Phase, ctx: RunContext) -> None:
    """Run one phase; its model(s) and record(s) are added to the context under its role(s)."""
    HANDLERS[type(phase)](phase, ctx)


def execute(plan: Plan, ctx: RunContext) -> None:
    """Run every phase of the plan in order (a resumed run loads the phases it finished instead)."""
    for phase in plan.phases:
        run_phase(phase, ctx)
