"""Strategies: who teaches whom and when, as functions from a config to the phases of a plan.

The distill section says what is matched (loss, temperature, alpha, beta); `strategy.kind` says who teaches:

- offline: a trained, frozen teacher (or ensemble) teaches the student (`offline`);
- joint: teacher and student train together in one cohort (`joint`, Apprentice);
- mutual: peers teach each other (`mutual`, DML);
- born_again: generations of the teacher's architecture, each from the one before (`born_again`);
- takd: teacher -> assistant -> student (`takd`).

`make_plan` is pure: it reads the config only, refuses settings a strategy cannot honour, and returns the
plan; nothing here trains, loads data or calls back into the runner. A new strategy is one new module with a
function returning its phases, and one row in `STRATEGIES`.
"""

from __future__ import annotations

from collections.abc import Callable

from kdkit.config import ExperimentConfig
from kdkit.errors import ConfigError
from kdkit.plan import ModelSource, ObjectivePlan, Phase, Plan, TrainPhase
from kdkit.strategies.born_again import born_again_phases
from kdkit.strategies.joint import joint_objective, joint_phases
from kdkit.strategies.mutual import mutual_objective, mutual_phases
from kdkit.strategies.offline import offline_phases
from kdkit.strategies.takd import takd_phases
from kdkit.strategies.teachers import teacher_phases

__all__ = [
    "STRATEGIES",
    "check_strategy",
    "joint_objective",
    "make_plan",
    "mutual_objective",
    "needs_trained_teacher",
]

# strategy.kind -> (phases of the distill step, given the config, the student's seed and whether a teacher
# phase precedes; whether that step needs a trained teacher first)
STRATEGIES: dict[str, tuple[Callable[[ExperimentConfig, int, bool], list[Phase]], bool]] = {
    "offline": (lambda cfg, seed, _: offline_phases(cfg, seed), True),
    "joint": (joint_phases, False),
    "mutual": (lambda cfg, seed, _: mutual_phases(cfg, seed), False),
    "born_again": (lambda cfg, seed, _: born_again_phases(cfg, seed), True),
    "takd": (lambda cfg, seed, _: takd_phases(cfg, seed), True),
}


def check_strategy(cfg: ExperimentConfig) -> None:
    """Raise ConfigError for settings the chosen strategy cannot honour (the config alone tells)."""
    make_plan(cfg)


def needs_trained_teacher(cfg: ExperimentConfig) -> bool:
    """Return True when the distill step of this config's strategy needs a trained teacher first."""
    return STRATEGIES[cfg.strategy.kind][1]


def _check_common(cfg: ExperimentConfig) -> None:
    kind = cfg.strategy.kind
    if kind != "offline" and cfg.teacher.ensemble:
        raise ConfigError(
            f"teacher.ensemble: strategy.kind {kind!r} trains or copies one teacher network; an ensemble teaches "
            "only with strategy.kind 'offline'"
        )
    if kind != "offline" and cfg.data.semi_supervised:
        raise ConfigError(
            f"data.labeled_fraction / data.labeled_count: unlabeled transfer sets are taught offline; "
            f"strategy.kind {kind!r} needs every label (remove them or use 'offline')"
        )
    if cfg.compress is not None and kind not in ("offline", "takd"):
        raise ConfigError(
            f"compress: it re-distills student_kd from the teacher checkpoint; strategy.kind {kind!r} "
            "does not produce that pair (remove compress or use kind offline/takd)"
        )


def make_plan(cfg: ExperimentConfig) -> Plan:
    """Return the phases of the run the config describes, refusing what no phase could honour."""
    _check_common(cfg)
    kind = cfg.strategy.kind
    phases = teacher_phases(cfg)
    student_seed = cfg.seed + 1  # scratch and distilled students start from the same weights
    if "scratch" in cfg.phases:
        s = cfg.student.train
        model = ModelSource("student.model", cfg.student.model, seed=student_seed)
        phases.append(
            TrainPhase("student_scratch", model, s, ObjectivePlan("hard_labels", s.label_smoothing))
        )
    if "distill" in cfg.phases:
        build, needs_teacher = STRATEGIES[kind]
        has_teacher = any(p.role == "teacher" for p in phases)
        if needs_teacher and not has_teacher:
            raise ConfigError(
                "phases: 'distill' needs a teacher: add 'teacher' to phases or set teacher.checkpoint"
            )
        phases += build(cfg, student_seed, has_teacher)
    plan = Plan(tuple(phases))
    if cfg.compress is not None and "student_kd" in plan.roles():
        plan = Plan(plan.phases, compress=True)
    return plan
