"""Born-again networks (Furlanello et al. 2018): generations of the teacher's architecture, each distilled
from the one before, the teacher being generation 0.

Each generation trains with distill.train, else teacher.train (the budget of generation 0), from the initial
weights of seed `seed + k`.
"""

from __future__ import annotations

from kdkit.config import ExperimentConfig
from kdkit.plan import ModelSource, Phase
from kdkit.strategies.distill import distill_phase


def born_again_phases(cfg: ExperimentConfig, student_seed: int) -> list[Phase]:
    """Return the phases born_again_1 .. born_again_G, generation k taught by generation k - 1."""
    assert cfg.teacher.model is not None
    train = cfg.distill.train or cfg.teacher.train
    phases: list[Phase] = []
    prev = "teacher"
    for k in range(1, cfg.strategy.generations + 1):
        role = f"born_again_{k}"
        model = ModelSource("teacher.model", cfg.teacher.model, seed=cfg.seed + k)
        record = {"strategy": "born_again", "generation": k, "taught_by": prev}
        phases.append(distill_phase(cfg, role, model, prev, train=train, record=record))
        prev = role
    return phases
