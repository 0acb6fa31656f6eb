"""Load a trained model from a kdkit checkpoint as a phase of the run (a teacher, an ensemble member, an assistant)."""

from __future__ import annotations

from typing import Any

from kdkit.config import ModelSpec
from kdkit.label_smoothing import checkpoint_label_smoothing, warn_label_smoothing
from kdkit.model_io import check_classes, load_model
from kdkit.phases.context import RunContext
from kdkit.plan import LoadPhase


def run_load(phase: LoadPhase, ctx: RunContext) -> None:
    """Load the checkpoint, check it predicts the data set's classes, evaluate and record it."""
    path, field = phase.checkpoint, phase.field
    model, meta = load_model(path, field)
    check_classes(
        meta, field, path, list(ctx.bundle.train.classes), ctx.cfg.data.dataset, phase.same_class_names
    )
    model = ctx.engine.prepare(model)
    extra: dict[str, Any] = {"loaded_from": path}
    smoothing = checkpoint_label_smoothing(path)
    if phase.same_class_names:
        extra["label_smoothing"] = (
            smoothing  # ensemble members record it (the ensemble's weights read records)
        )
    extra.update(ctx.check_split(meta, field, path))
    ctx.finish(phase.role, model, ModelSpec.model_validate(meta["model"]), None, remembered=True, **extra)
    if phase.teaches is not None:
        warn_label_smoothing(phase.teaches, smoothing)
    ctx.models[phase.role] = model
