"""Distill a model from a frozen teacher: its transfer set, how the teacher's outputs arrive, its objective.

Everything the phase could refuse was refused by the planner and preflight; here the phase only runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from kdkit import distributed
from kdkit.batches import LABELS
from kdkit.class_bias import adjust_class_bias
from kdkit.data.bundle import make_loader
from kdkit.data.lm_sources import LMDataset
from kdkit.data.loader import Augment, AugParams
from kdkit.data.sources import ArrayDataset
from kdkit.data.splits import omit_classes
from kdkit.data.text import TextDataset, concat_text
from kdkit.ensemble import EnsembleTeacher
from kdkit.objective import Objective
from kdkit.objective_builder import build_objective, hidden_state_losses, logit_objective
from kdkit.phases.context import RunContext
from kdkit.phases.lm_distill import lm_distill_setup, sparse_cache_setup
from kdkit.phases.objectives import objective_of
from kdkit.phases.teacher_outputs import cached_logits, cached_sentence_logits, precomputed_logits
from kdkit.phases.train import train_model
from kdkit.plan import DistillPhase
from kdkit.pretrain import run_pretraining
from kdkit.steps import ServedTeacherStep, TeacherStep
from kdkit.teacher_quality import chance_level_warning
from kdkit.transfer import mask_unlabeled, relabel_transfer_set, unlabeled_transfer_set


def _transfer_set(
    phase: DistillPhase, ctx: RunContext, frozen: nn.Module
) -> tuple[ArrayDataset | TextDataset, Tensor | None, dict[str, Any]]:
    """Return the transfer set, the teacher's logits fixed per image (relabel, unlabeled) and what to record."""
    t, train = phase.transfer, ctx.bundle.train
    if t.images == "relabel":
        assert t.relabel is not None and isinstance(frozen, EnsembleTeacher)
        return relabel_transfer_set(ctx.teacher_logits, frozen, train, t.relabel, phase.seed)
    if t.images == "unlabeled":
        assert t.unlabeled is not None and ctx.bundle.unlabeled is not None
        hidden, u = ctx.bundle.unlabeled, t.unlabeled
        logits = ctx.teacher_logits(frozen, np.concatenate([train.images, hidden.images]))
        transfer, fixed, info = unlabeled_transfer_set(train, hidden, logits, u)
        ctx.engine.console.print(
            f"[{phase.role}] round {t.round}/{u.rounds}: {info['labeled']} labeled + {info['unlabeled_used']} of "
            f"{info['unlabeled_total']} unlabeled images ({u.targets} targets)",
            highlight=False,
            markup=False,
        )
        return transfer, fixed, {"unlabeled": {**info, "round": t.round, "rounds": u.rounds}}
    transfer = omit_classes(train, list(t.omit_classes)) if t.omit_classes else train
    augmented = ctx.bundle.augmented
    if t.augmented_sentences:
        # Tang et al.: the training sentences and their augmented drafts, which only the teacher labels.
        assert augmented is not None and isinstance(transfer, TextDataset)
        transfer = concat_text(transfer, augmented, f"{transfer.name}+augmented")
        return transfer, None, {"augmented_sentences": len(augmented)}
    return transfer, None, {}


def _terms_objective(
    phase: DistillPhase,
    ctx: RunContext,
    frozen: nn.Module,
    transfer: ArrayDataset | TextDataset,
    info: dict[str, Any],
) -> Callable[[nn.Module], Objective]:
    """Return a builder of the custom-terms objective, sized on the student once it is built."""
    engine, dev = ctx.engine, ctx.engine.runtime.device
    first = next(iter(make_loader(transfer, ctx.bundle, 64, train=False, channels_last=ctx.cl)))
    sample = ctx.bundle.task.inputs(first, dev)  # (images,) or (token ids, attention mask)
    augment = Augment(**phase.train.augment.model_dump())
    # A language model's -100 labels mark positions without a next token (the terms skip them), not unlabeled data.
    unlabeled = not isinstance(transfer, LMDataset) and bool((transfer.labels < 0).any())

    def loader() -> Any:
        return make_loader(
            transfer,
            ctx.bundle,
            phase.train.batch_size,
            train=True,
            seed=phase.seed,
            augment=augment,
            channels_last=ctx.cl,
        )

    def build(student: nn.Module) -> Objective:
        obj = build_objective(
            list(phase.objective.terms),
            engine.prepare(student),
            frozen.model,
            sample,
            first[LABELS].clamp_min(0).to(dev),  # the dry run needs valid class ids
            n_data=len(transfer),
        )
        # Terms with a stage of their own (factor transfer's paraphraser, images only) train it first.
        stages = run_pretraining(
            obj, engine, frozen, loader, phase.train, ctx.policy(), phase.role, sample[0]
        )
        if stages:
            info["pretraining"] = stages
        return mask_unlabeled(obj, "distill.terms") if unlabeled else obj

    return build


def _class_bias(phase: DistillPhase, ctx: RunContext) -> Callable[[nn.Module], dict[str, Any]]:
    def adjust(model: nn.Module) -> dict[str, Any]:
        if not phase.class_bias:
            return {}
        before = ctx.engine.evaluate(model, ctx.test_loader, ctx.bundle.num_classes, ctx.bundle.task)
        adjust_class_bias(model, phase.class_bias)
        return {
            "before_class_bias": {
                "accuracy": before.accuracy,
                "errors": before.errors,
                "errors_per_class": before.errors_per_class,
            },
            "class_bias": {str(k): v for k, v in phase.class_bias.items()},
        }

    return adjust


def _teacher_warnings(phase: DistillPhase, ctx: RunContext) -> dict[str, Any]:
    """Print and return (for the distilled model's record) a warning about a teacher at chance level."""
    record = ctx.records.get(phase.teacher) or {}
    warning = chance_level_warning(phase.teacher, record, ctx.bundle.num_classes, len(ctx.bundle.val))
    if warning is None:
        return {}
    if distributed.info().is_main:
        ctx.engine.console.print(
            f"warning: [{phase.role}] {warning}", style="yellow", highlight=False, markup=False
        )
    return {"warnings": [warning]}


def run_distill(phase: DistillPhase, ctx: RunContext) -> None:
    """Distill the phase's model from the model of its teacher phase; record and save it."""
    if (done := ctx.finished(phase.role)) is not None:
        ctx.models[phase.role] = done
        return
    warnings = _teacher_warnings(phase, ctx)  # before any time is spent on the teacher's outputs
    frozen = ctx.freeze(ctx.models[phase.teacher])
    transfer, fixed, info = _transfer_set(phase, ctx, frozen)
    lm_steps, lm_objective, lm_served = None, None, {}
    if isinstance(transfer, LMDataset):  # distill.lm: supervised, on-policy or sequence-level
        transfer, lm_steps, lm_info = lm_distill_setup(phase, ctx, frozen, transfer)
        if phase.outputs == "cache":  # the teacher's top-k targets on disk (supervised only)
            lm_served, lm_steps, lm_objective, lm_info["lm_mode"]["cache"] = sparse_cache_setup(
                phase, ctx, frozen, transfer
            )
        info.update(lm_info)
    augment = Augment(**phase.train.augment.model_dump())
    if isinstance(frozen, EnsembleTeacher) and frozen.mode == "random":
        steps = -(-len(transfer) // phase.train.batch_size)
        info["ensemble"] = {"mode": "random", "batches_per_teacher": frozen.picks(phase.train.epochs, steps)}
    extras: dict[str, torch.Tensor] = {}
    draws: AugParams | None = None
    draw_extras: dict[str, torch.Tensor] = {}
    if fixed is not None:
        extras["teacher.logits"] = fixed
    elif phase.outputs == "precompute":
        extras["teacher.logits"] = precomputed_logits(ctx, frozen, transfer)
    elif lm_served:
        extras.update(lm_served)
    elif phase.outputs == "cache" and isinstance(transfer, TextDataset):
        extras["teacher.logits"] = cached_sentence_logits(ctx, frozen, transfer)
    elif phase.outputs == "cache":
        logits, draws = cached_logits(ctx, frozen, transfer, augment, phase.seed)
        if draws is None:
            extras["teacher.logits"] = logits[:, 0]
        else:
            draw_extras["teacher.logits"] = logits
    record = {
        "transfer_size": len(transfer),
        "omitted_classes": list(phase.transfer.omit_classes),
        "teacher_outputs": phase.outputs,
        **info,
        **phase.record,
        **warnings,
    }
    objective: Objective | Callable[[nn.Module], Objective]
    if ctx.bundle.is_lm and hidden_state_losses(list(phase.objective.terms)):
        # Hidden-state terms (fitnet between blocks, say) get their adapters sized on a sample of the text.
        objective = _terms_objective(phase, ctx, frozen, transfer, record)
    elif ctx.bundle.is_lm:
        # Per-token terms: label -100 marks a position without a next token, which every term already skips.
        objective = lm_objective or (
            logit_objective(list(phase.objective.terms))
            if phase.objective.kind == "terms"
            else objective_of(phase.objective)
        )
    elif phase.objective.kind == "terms":
        objective = _terms_objective(phase, ctx, frozen, transfer, record)
    else:
        objective = objective_of(phase.objective)
        if bool((transfer.labels < 0).any()):
            objective = mask_unlabeled(objective)
    ctx.models[phase.role] = train_model(
        ctx,
        phase.role,
        phase.model,
        objective,
        phase.train,
        transfer,
        seed=phase.seed,
        # The plan decided how the teacher's outputs arrive: a forward every step, or served by the loader.
        steps=lm_steps
        or (TeacherStep(frozen) if phase.outputs == "online" else ServedTeacherStep(teacher=frozen)),
        extras=extras,
        draws=draws,
        draw_extras=draw_extras,
        before_finish=_class_bias(phase, ctx),
        record=record,
    )
