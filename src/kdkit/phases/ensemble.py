"""Combine the trained or loaded teachers of earlier phases into one ensemble teacher, evaluated and recorded."""

from __future__ import annotations

from kdkit.ensemble import EnsembleTeacher, normalized_weights
from kdkit.phases.context import RunContext
from kdkit.plan import EnsemblePhase
from kdkit.report import eval_record


def run_ensemble(phase: EnsemblePhase, ctx: RunContext) -> None:
    """Build the ensemble of the member phases' models; record its own accuracy as `phase.role`."""
    e, engine = phase.ensemble, ctx.engine
    members = [ctx.models[r] for r in phase.members]
    val_acc = [ctx.records[r]["val_accuracy"] for r in phase.members]
    weights = normalized_weights(e.weights, val_acc)
    ens = EnsembleTeacher(
        members,
        weights,
        mode="random" if e.mode == "random" else "average",
        temperature=phase.temperature,
        seed=phase.seed,
        dtype=engine.runtime.amp_dtype,
    )
    ens = engine.prepare(ens)
    # The ensemble's own accuracy: the weighted mean of the members' probabilities (T = 1).
    judge = engine.prepare(ens.averaged(1.0))
    val = engine.evaluate(judge, ctx.val_loader, ctx.bundle.num_classes, ctx.bundle.task)
    test = engine.evaluate(judge, ctx.test_loader, ctx.bundle.num_classes, ctx.bundle.task)
    rec = eval_record(judge, None, val, test, ctx.bundle.train.classes)
    rec["train_seconds"] = round(sum(ctx.records[r]["train_seconds"] for r in phase.members), 3)
    rec["ensemble"] = {
        "mode": e.mode,
        "weights": [round(w, 6) for w in weights],
        "weights_from": e.weights if isinstance(e.weights, str) else "given",
        "members": list(phase.members),
    }
    ctx.records[phase.role] = rec
    ctx.models[phase.role] = ens
