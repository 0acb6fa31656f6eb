"""kdkit: knowledge distillation for PyTorch.

The names below are imported lazily, so that `kdkit --help` does not pay for importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Engine": "kdkit.engine",
    "FrozenTeacher": "kdkit.teacher",
    "InMemoryLoader": "kdkit.data.loader",
    "TokenLoader": "kdkit.data.tokens",
    "ClassificationTask": "kdkit.tasks",
    "StudentStep": "kdkit.steps",
    "TeacherStep": "kdkit.steps",
    "ServedTeacherStep": "kdkit.steps",
    "CohortStep": "kdkit.steps",
    "Augment": "kdkit.data.loader",
    "Objective": "kdkit.objective",
    "Term": "kdkit.objective",
    "TermConfig": "kdkit.config",
    "build_objective": "kdkit.objective_builder",
    "TrainConfig": "kdkit.config",
    "ExperimentConfig": "kdkit.config",
    "load_config": "kdkit.config",
    "load_dataset": "kdkit.data",
    "resolve_runtime": "kdkit.runtime",
    "run_experiment": "kdkit.experiment",
    "KdkitError": "kdkit.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'kdkit' has no attribute {name!r}")
