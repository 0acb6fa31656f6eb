"""Teacher assistant distillation (Mirzadeh et al. 2020): teacher -> assistant -> student.

The assistant is loaded (strategy.assistant.checkpoint) or distilled from the teacher; the student (role
student_kd) is taught by the assistant only.
"""

from __future__ import annotations

from kdkit.config import ExperimentConfig
from kdkit.plan import LoadPhase, ModelSource, Phase
from kdkit.strategies.distill import distill_phase


def takd_phases(cfg: ExperimentConfig, student_seed: int) -> list[Phase]:
    """Return the assistant's phase and the student's distillation from it."""
    a = cfg.strategy.assistant
    assert a is not None  # the config requires it for takd
    phases: list[Phase] = []
    if a.checkpoint:
        phases.append(LoadPhase("assistant", a.checkpoint, "strategy.assistant.checkpoint"))
    else:
        model = ModelSource("strategy.assistant.model", a.model, seed=cfg.seed + 2)
        record = {"strategy": "takd", "taught_by": "teacher"}
        phases.append(distill_phase(cfg, "assistant", model, "teacher", train=a.train, record=record))
    student = ModelSource("student.model", cfg.student.model, seed=student_seed)
    record = {"strategy": "takd", "taught_by": "assistant"}
    phases.append(
        distill_phase(cfg, "student_kd", student, "assistant", train=cfg.distill_train(), record=record)
    )
    return phases
