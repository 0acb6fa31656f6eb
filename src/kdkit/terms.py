"""Build an objective from `distill.terms`: loss names, module paths, adapters made from observed shapes.

Every problem (unknown loss, wrong module path, feature shapes that cannot meet without an adapter) is
found by one dry forward pass on a real batch and reported before training starts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from kdkit import losses as L
from kdkit.adapters import adapter_for
from kdkit.config import TermConfig
from kdkit.errors import ConfigError, ModelError
from kdkit.losses.objective import Objective, Term
from kdkit.taps import Tap


def _flat(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
    # Embedding losses read the flattened features (e.g. the pooled penultimate layer).
    def wrapped(s: Tensor, t: Tensor, **kw: Any) -> Tensor:
        return fn(s.flatten(1), t.flatten(1), **kw)

    wrapped.__name__ = fn.__name__
    return wrapped


def _fitnet_term(s: Tensor, t: Tensor) -> Tensor:
    # A linear adapter yields flat features: compare with the flattened teacher map.
    if s.shape != t.shape and s.ndim != t.ndim and s.flatten(1).shape == t.flatten(1).shape:
        return L.fitnet(s.flatten(1), t.flatten(1))
    return L.fitnet(s, t)


@dataclass(frozen=True)
class LossSpec:
    """How a loss name maps to a function and what it reads."""

    fn: Callable[..., Tensor]
    kind: str  # "logits" (student/teacher logits), "labels" (logits + labels), "ce", "feature", "embedding"
    needs_adapter_when_shapes_differ: bool = False


LOSSES: dict[str, LossSpec] = {
    "kd": LossSpec(L.kd, "logits"),
    "logit_mse": LossSpec(L.logit_mse, "logits"),
    "kd_mse_mix": LossSpec(L.kd_mse_mix, "logits"),
    "dkd": LossSpec(L.dkd, "labels"),
    "ce": LossSpec(L.cross_entropy, "ce"),
    "fitnet": LossSpec(_fitnet_term, "feature", needs_adapter_when_shapes_differ=True),
    "attention_transfer": LossSpec(L.attention_transfer, "feature"),
    "similarity_preserving": LossSpec(L.similarity_preserving, "feature"),
    "nst": LossSpec(L.nst, "feature"),
    "pkt": LossSpec(_flat(L.pkt), "embedding"),
    "rkd": LossSpec(_flat(L.rkd), "embedding"),
    "correlation_congruence": LossSpec(_flat(L.correlation_congruence), "embedding"),
    # Losses with parameters or state: the module is built from the observed shapes in build_objective.
    "vid": LossSpec(L.fitnet, "module"),
    "crd": LossSpec(L.fitnet, "module"),
}


def _module_loss(name: str, s: Tensor, t: Tensor, options: dict[str, Any], n_data: int | None) -> nn.Module:
    """Return the loss module of a stateful term, sized from the student and teacher features."""
    if name == "vid":
        if s.ndim != 4 or t.ndim != 4:
            raise ValueError(
                f"vid compares feature maps (N, C, H, W); got {tuple(s.shape)} and {tuple(t.shape)}"
            )
        return L.VIDLoss(s.shape[1], options.pop("mid_channels", t.shape[1]), t.shape[1], **options)
    if n_data is None:
        raise ValueError("crd keeps a memory bank over the transfer set: its size is needed")
    return _CRDTerm(L.CRDLoss(s.flatten(1).shape[1], t.flatten(1).shape[1], n_data, **options))


class _CRDTerm(nn.Module):
    """CRD over flattened features at the batch's dataset indices (memory bank rows)."""

    def __init__(self, crd: nn.Module) -> None:
        super().__init__()
        self.crd = crd

    def forward(self, s: Tensor, t: Tensor, index: Tensor) -> Tensor:
        """Return the contrastive loss of this batch."""
        return self.crd(s.flatten(1).float(), t.flatten(1).float(), index)


def _inputs(spec: LossSpec, tc: TermConfig, where: str) -> tuple[str, ...]:
    if spec.kind in ("feature", "embedding", "module"):
        if not tc.student or not tc.teacher:
            raise ConfigError(
                f"{where}: loss {tc.loss!r} compares features: set both `student` and `teacher` "
                "to module paths (e.g. student: layer3, teacher: layer3)"
            )
        if tc.loss == "crd":
            return (f"student:{tc.student}", f"teacher:{tc.teacher}", "index")
        return (f"student:{tc.student}", f"teacher:{tc.teacher}")
    if tc.student or tc.teacher:
        raise ConfigError(f"{where}: loss {tc.loss!r} reads logits; remove `student`/`teacher` module paths")
    if spec.kind == "ce":
        return ("student.logits", "labels")
    if spec.kind == "labels":
        return ("student.logits", "teacher.logits", "labels")
    return ("student.logits", "teacher.logits")


def _probe(
    model: nn.Module, paths: list[str], x: Tensor, what: str, where: str
) -> tuple[Tensor, dict[str, Tensor]]:
    """Run one forward pass in eval mode and return the logits and the tapped outputs."""
    try:
        tap = Tap(model, paths, what=what)
    except ModelError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    was_training = model.training
    model.eval()
    param = next(model.parameters(), None)
    if param is not None and param.dtype != x.dtype:
        x = x.to(param.dtype)  # a teacher held in bf16 takes bf16 inputs
    try:
        with torch.no_grad():
            logits = model(x).float()
        return logits, dict(tap.outputs)
    finally:
        tap.remove()
        model.train(was_training)


def build_objective(
    terms: list[TermConfig],
    student: nn.Module,
    teacher: nn.Module,
    sample: Tensor,
    labels: Tensor,
    field: str = "distill.terms",
    n_data: int | None = None,
) -> Objective:
    """Return the objective of `terms`, with adapters built from the shapes seen on a sample batch."""
    built: list[Term] = []
    for i, tc in enumerate(terms):
        where = f"{field}[{i}]"
        spec = LOSSES.get(tc.loss)
        if spec is None:
            raise ConfigError(f"{where}.loss: unknown loss {tc.loss!r}; known: {sorted(LOSSES)}")
        built.append(
            Term(
                name=tc.loss,
                fn=spec.fn,
                inputs=_inputs(spec, tc, where),
                weight=tc.weight,
                kwargs=dict(tc.options),
                start_epoch=tc.start_epoch,
                stop_epoch=tc.stop_epoch,
                warmup_epochs=tc.warmup_epochs,
            )
        )
    obj_paths = Objective(built)
    s_logits, s_feats = _probe(student, obj_paths.student_paths(), sample, "student", field)
    t_logits, t_feats = _probe(teacher, obj_paths.teacher_paths(), sample, "teacher", field)
    if s_logits.shape != t_logits.shape:
        raise ModelError(
            f"student logits {tuple(s_logits.shape)} and teacher logits {tuple(t_logits.shape)} "
            "differ: both must predict the same classes"
        )
    tensors = {
        "student.logits": s_logits,
        "teacher.logits": t_logits,
        "labels": labels,
        "index": torch.arange(len(labels), device=labels.device),
        **{f"student:{k}": v for k, v in s_feats.items()},
        **{f"teacher:{k}": v for k, v in t_feats.items()},
    }

    adapters: dict[str, nn.Module] = {}
    for i, (tc, term) in enumerate(zip(terms, built)):
        if LOSSES[tc.loss].kind == "module":
            try:
                module = _module_loss(
                    tc.loss, tensors[term.inputs[0]], tensors[term.inputs[1]], dict(tc.options), n_data
                )
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"{field}[{i}] ({tc.loss}): {exc}") from None
            adapters[f"term{i}"] = module  # trained with the student and saved with the run
            term.fn, term.kwargs = module, {}
            continue
        if LOSSES[tc.loss].kind not in ("feature", "embedding"):
            continue
        s_shape = tuple(tensors[term.inputs[0]].shape)
        t_shape = tuple(tensors[term.inputs[1]].shape)
        differ = s_shape != t_shape
        want = (
            tc.adapter
            if tc.adapter != "auto"
            else ("auto" if differ and LOSSES[tc.loss].needs_adapter_when_shapes_differ else "none")
        )
        if want == "none":
            if differ and LOSSES[tc.loss].needs_adapter_when_shapes_differ:
                raise ConfigError(
                    f"{field}[{i}]: {tc.loss} student feature {tc.student!r} {s_shape} and teacher feature "
                    f"{tc.teacher!r} {t_shape} differ and the adapter is 'none'; set adapter: auto (or conv/linear)"
                )
            continue
        try:
            adapters[f"term{i}"] = adapter_for(s_shape, t_shape, want)
        except ValueError as exc:
            raise ConfigError(f"{field}[{i}].adapter: {exc}") from None
        term.adapter = f"term{i}"
    objective = Objective(built, modules=adapters)
    # The dry run: every term once on the real shapes, so a mismatch fails now, not mid-training.
    objective.eval()
    with torch.no_grad():
        for i, term in enumerate(built):
            try:
                term(tensors, objective.adapters[term.adapter] if term.adapter else None)
            except (ValueError, RuntimeError) as exc:
                raise ConfigError(f"{field}[{i}] ({term.name}): {exc}") from None
    objective.train()
    return objective
