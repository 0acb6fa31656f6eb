"""Train one model of a run through the engine, or load it when a resumed run finished it already."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from kdkit import distributed
from kdkit.checkpoint import save_checkpoint
from kdkit.config import TrainConfig
from kdkit.data.bundle import make_loader
from kdkit.data.loader import Augment, AugParams
from kdkit.data.sources import ArrayDataset
from kdkit.data.text import TextDataset
from kdkit.label_smoothing import warn_label_smoothing
from kdkit.model_io import build_model_reported
from kdkit.objective import Objective
from kdkit.phases.context import RunContext
from kdkit.phases.objectives import objective_of
from kdkit.plan import ModelSource, TrainPhase
from kdkit.runtime import seed_everything
from kdkit.steps import StepProvider


def train_model(
    ctx: RunContext,
    role: str,
    source: ModelSource,
    objective: Objective | Callable[[nn.Module], Objective],
    tcfg: TrainConfig,
    transfer: ArrayDataset | TextDataset,
    *,
    seed: int,
    steps: StepProvider | None = None,
    extras: dict[str, torch.Tensor] | None = None,
    draws: AugParams | None = None,
    draw_extras: dict[str, torch.Tensor] | None = None,
    before_finish: Callable[[nn.Module], dict[str, Any]] | None = None,
    record: dict[str, Any] | None = None,
) -> nn.Module:
    """Train one model (or load it when a resumed run finished it already), record and save it."""
    done = ctx.finished(role)
    if done is not None:
        return done
    assert source.spec is not None
    seed_everything(seed)
    model, weights = build_model_reported(
        source.spec, *ctx.dims, field=source.field, causal_lm=ctx.bundle.is_lm
    )
    if weights is not None:
        ctx.engine.say(f"[{role}] {weights.line()}")
        record = {**(record or {}), "pretrained": weights.record()}
    if not isinstance(objective, Objective):
        objective = objective(model)  # built from the model's observed shapes (adapters)
    loader = make_loader(
        transfer,
        ctx.bundle,
        tcfg.batch_size,
        train=True,
        seed=seed,
        augment=Augment(**tcfg.augment.model_dump()),
        channels_last=ctx.cl,
        extras=extras,
        draws=draws,
        draw_extras=draw_extras,
    )
    fit = ctx.engine.fit(
        role,
        model,
        objective,
        loader,
        tcfg,
        steps=steps,
        task=ctx.bundle.task,
        val_loader=ctx.val_loader,
        checkpoint=ctx.policy(),
    )
    if any(True for _ in objective.state_dict()) and distributed.info().is_main:
        # Adapters and other trained parts of the objective are kept with the run, apart from the student.
        save_checkpoint(ctx.ckpt_dir / f"{role}-objective", objective.state_dict(), {"kind": "objective"})
    extra = dict(record or {})
    if before_finish is not None:
        extra.update(before_finish(fit.model))
    ctx.finish(role, fit.model, source.spec, fit, **extra)
    return fit.model


def run_train(phase: TrainPhase, ctx: RunContext) -> None:
    """Train a model on the labels of the training split (teacher, scratch student, ensemble member)."""
    if phase.teaches is not None:
        warn_label_smoothing(phase.teaches, phase.train.label_smoothing)
    assert phase.model.seed is not None
    ctx.models[phase.role] = train_model(
        ctx,
        phase.role,
        phase.model,
        objective_of(phase.objective),
        phase.train,
        ctx.bundle.train,
        seed=phase.model.seed,
        record=phase.record,
    )
