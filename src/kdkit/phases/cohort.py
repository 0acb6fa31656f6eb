"""Train the members of a cohort together as one phase of the engine (joint teacher/student, mutual peers)."""

from __future__ import annotations

import copy

from torch import nn

from kdkit.cohort import Cohort
from kdkit.data.bundle import make_loader
from kdkit.data.loader import Augment
from kdkit.model_io import build_model
from kdkit.phases.context import RunContext
from kdkit.phases.objectives import objective_of
from kdkit.plan import CohortMember, CohortPhase
from kdkit.runtime import seed_everything
from kdkit.steps import CohortStep


def _start(member: CohortMember, ctx: RunContext) -> nn.Module:
    src = member.start
    if src.copy_of is not None:
        model = copy.deepcopy(ctx.models[src.copy_of])
        for p in model.parameters():
            p.requires_grad_(True)
        return model.train()
    assert src.spec is not None and src.seed is not None
    seed_everything(src.seed)  # the same initial weights as an ordinary phase with this seed
    return build_model(src.spec, *ctx.dims, field=src.field)


def run_cohort(phase: CohortPhase, ctx: RunContext) -> None:
    """Train the members in one step with one optimizer; evaluate, record and save each of them."""
    if ctx.resume and all((ctx.ckpt_dir / f"{m.role}.json").is_file() for m in phase.members):
        for m in phase.members:
            model = ctx.finished(m.role)
            if model is not None:
                ctx.models[m.role] = model
        return
    cohort = Cohort({m.name: _start(m, ctx) for m in phase.members}, phase.primary)  # built in order
    tcfg = phase.train
    loader = make_loader(
        ctx.bundle.train,
        ctx.bundle,
        tcfg.batch_size,
        train=True,
        seed=phase.seed,
        augment=Augment(**tcfg.augment.model_dump()),
        channels_last=ctx.cl,
    )
    objective = objective_of(phase.objective)
    fit = ctx.engine.fit(
        phase.name,
        cohort,
        objective,
        loader,
        tcfg,
        steps=CohortStep(cohort),  # every member's logits, as `<member>.logits`
        task=ctx.bundle.task,
        val_loader=ctx.val_loader,
        checkpoint=ctx.policy(),
    )
    trained = fit.model
    assert isinstance(trained, Cohort)
    roles = [m.role for m in phase.members]
    for m in phase.members:
        together = [r for r in roles if r != m.role]
        member = trained.members[m.name]
        ctx.finish(m.role, member, m.spec, fit, **phase.record, trained_with=together, phase=phase.name)
        ctx.models[m.role] = member
