"""Warnings about teachers trained with label smoothing, which erases what distillation transfers."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import yaml


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
