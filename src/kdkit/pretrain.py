"""Stages that some loss terms train before the student's distillation, through the one engine.

A term module may offer ``pretrain_stage(teacher) -> PretrainStage`` (factor transfer: its paraphraser learns
to reconstruct the frozen teacher's feature). `run_pretraining` trains each such stage with `Engine.fit`,
with its own checkpoints (phase ``<phase>-<term>-<stage>``), so an interrupted stage resumes and a finished
one is loaded instead of trained again; then the stage's `finish` freezes what it trained.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from kdkit.config import TrainConfig
from kdkit.data.loader import InMemoryLoader
from kdkit.engine import Engine
from kdkit.objective import Objective, Term
from kdkit.resume import CheckpointPolicy
from kdkit.taps import Tap
from kdkit.terms.stage import PretrainStage


def stage_objective(stage: PretrainStage) -> Objective:
    """Return the objective of a stage: its one loss over the stage model's tapped outputs."""
    return Objective([Term(stage.loss_name, stage.loss, stage.inputs)])


@torch.no_grad()
def stage_loss(stage: PretrainStage, objective: Objective, x: Tensor) -> float:
    """Return the stage objective on one batch, in eval mode and fp32."""
    was_training = stage.model.training
    stage.model.eval()
    try:
        with Tap(stage.model, objective.student_paths(), what="stage") as tap:
            logits = stage.model(x)
            tensors = {"student.logits": logits, **{f"student:{k}": v for k, v in tap.outputs.items()}}
            loss, _ = objective(tensors)
        return float(loss)
    finally:
        stage.model.train(was_training)


def run_pretraining(
    objective: Objective,
    engine: Engine,
    teacher: nn.Module,
    loader: Callable[[], InMemoryLoader],
    tcfg: TrainConfig,
    checkpoint: CheckpointPolicy | None,
    phase: str,
    probe: Tensor,
) -> list[dict[str, Any]]:
    """Train the pre-training stage of every term module that has one; return one record per stage.

    Each stage runs `epochs` over the transfer loader with the distillation's optimiser, batch size and
    augmentation, at the stage's own learning rate held constant. The record holds the stage loss on the
    `probe` batch before and after, and the per-epoch training history.
    """
    records: list[dict[str, Any]] = []
    for key, module in objective.adapters.items():
        make_stage = getattr(module, "pretrain_stage", None)
        if make_stage is None:
            continue
        stage: PretrainStage = make_stage(teacher)
        stage_obj = stage_objective(stage)
        try:
            stage.model = engine.prepare(stage.model)
            cfg = tcfg.model_copy(
                update={"epochs": stage.epochs, "lr": stage.lr, "schedule": "constant", "warmup_epochs": 0.0}
            )
            before = stage_loss(stage, stage_obj, probe)
            name = f"{phase}-{key}-{stage.name}"
            fit = engine.fit(name, stage.model, stage_obj, loader(), cfg, checkpoint=checkpoint)
            after = stage_loss(stage, stage_obj, probe)
        finally:
            stage.close()
        stage.finish()
        engine.console.print(
            f"[{name}] {stage.name} trained for {stage.epochs} epoch(s): probe-batch loss "
            f"{before:.4f} -> {after:.4f}",
            highlight=False,
            markup=False,
        )
        records.append(
            {
                "term": key,
                "stage": stage.name,
                "epochs": stage.epochs,
                "lr": stage.lr,
                "probe_loss_before": before,
                "probe_loss_after": after,
                "history": fit.history,
                "train_seconds": round(fit.train_seconds, 3),
            }
        )
    return records
