"""Build an objective from `distill.terms`: loss names, module paths, adapters made from observed shapes.

Everything a term is (what it reads, its options, its function or module) comes from the registry
(`kdkit.terms`). Every problem (unknown loss, wrong module path, feature shapes that cannot meet without an
adapter) is found by one dry forward pass on a real batch and reported before training starts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from kdkit.adapters import adapter_for
from kdkit.config import TermConfig
from kdkit.errors import ConfigError, ModelError
from kdkit.objective import Objective, Term
from kdkit.taps import Tap
from kdkit.terms.registry import TERMS, TermContext, TermSpec

Sample = Tensor | tuple[Tensor, ...]  # what a model is called with: images, or (token ids, attention mask)


def reads_teacher_features(terms: list[TermConfig]) -> bool:
    """Return True when any term reads teacher features, so fixed (cached, precomputed) logits cannot serve."""
    return any(TERMS[t.loss].reads_teacher_features for t in terms if t.loss in TERMS)


def _flat(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
    # Embedding terms read the flattened features (e.g. the pooled penultimate layer).
    def flattened(s: Tensor, t: Tensor, *rest: Tensor, **kw: Any) -> Tensor:
        return fn(s.flatten(1), t.flatten(1), *rest, **kw)

    flattened.__name__ = getattr(fn, "__name__", type(fn).__name__)
    return flattened


def _split_lists(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
    # A term over lists of layers gets the student's maps, then the teacher's: split them back into two lists.
    def over_lists(*maps: Tensor, **kw: Any) -> Tensor:
        half = len(maps) // 2
        return fn(maps[:half], maps[half:], **kw)

    over_lists.__name__ = getattr(fn, "__name__", "over_lists")
    return over_lists


def _spec(tc: TermConfig, where: str) -> TermSpec:
    spec = TERMS.get(tc.loss)
    if spec is None:
        raise ConfigError(f"{where}.loss: unknown loss {tc.loss!r}; known: {sorted(TERMS)}")
    return spec


def _layer_lists(tc: TermConfig, where: str) -> tuple[str, ...]:
    """Return the inputs of a term over lists of layers: every student map, then every teacher map."""
    lists = []
    for side in ("student", "teacher"):
        paths = getattr(tc, side)
        if not isinstance(paths, list) or len(paths) < 2:
            raise ConfigError(
                f"{where}.{side}: loss {tc.loss!r} reads a list of at least 2 module paths per side, one per "
                f"layer whose consecutive pairs are compared (e.g. [relu, layer1, layer2, layer3]); got {paths!r}"
            )
        lists.append(paths)
    if len(lists[0]) != len(lists[1]):
        raise ConfigError(
            f"{where}: loss {tc.loss!r} pairs the student's and the teacher's layers in order, so both lists "
            f"need the same length; got {len(lists[0])} student paths {lists[0]} and {len(lists[1])} "
            f"teacher paths {lists[1]}"
        )
    return tuple(f"student:{p}" for p in lists[0]) + tuple(f"teacher:{p}" for p in lists[1])


def _inputs(spec: TermSpec, tc: TermConfig, where: str) -> tuple[str, ...]:
    """Return the named tensors a term reads, from its kind and the module paths of its config."""
    if not spec.reads_features:
        if tc.student or tc.teacher:
            raise ConfigError(
                f"{where}: loss {tc.loss!r} reads logits; remove `student`/`teacher` module paths"
            )
        return spec.logit_inputs
    if not tc.student or not tc.teacher:
        raise ConfigError(
            f"{where}: loss {tc.loss!r} compares features: set both `student` and `teacher` "
            "to module paths (e.g. student: layer3, teacher: layer3)"
        )
    if spec.kind == "layer_lists":
        return _layer_lists(tc, where) + spec.extra_inputs
    for side in ("student", "teacher"):
        if isinstance(getattr(tc, side), list):
            lists = sorted(n for n, s in TERMS.items() if s.kind == "layer_lists")
            raise ConfigError(
                f"{where}.{side}: loss {tc.loss!r} reads one module path per side, got the list "
                f"{getattr(tc, side)}; write one term per layer (lists of paths are for {', '.join(lists)})"
            )
    return (f"student:{tc.student}", f"teacher:{tc.teacher}") + spec.extra_inputs


def _not_built(*inputs: Tensor, **options: Any) -> Tensor:
    # The placeholder of a stateful term until build_objective replaces it with the term's module.
    raise RuntimeError("a stateful loss term was called before its module was built")


def _term(spec: TermSpec, tc: TermConfig, where: str) -> Term:
    """Return the term of one config entry, its options checked by the term's options model."""
    try:
        options = spec.validate_options(tc.options)
    except ValueError as exc:
        raise ConfigError(f"{where}.options: {exc}") from None
    fn = spec.fn or _not_built
    if spec.fn is not None and spec.kind == "embedding":
        fn = _flat(fn)
    elif spec.fn is not None and spec.kind == "layer_lists":
        fn = _split_lists(fn)
    return Term(
        name=tc.loss,
        fn=fn,
        inputs=_inputs(spec, tc, where),
        weight=tc.weight,
        kwargs=options,
        start_epoch=tc.start_epoch,
        stop_epoch=tc.stop_epoch,
        warmup_epochs=tc.warmup_epochs,
    )


def _probe(
    model: nn.Module, paths: list[str], sample: Sample, what: str, where: str
) -> tuple[Tensor, dict[str, Tensor]]:
    """Run one forward pass in eval mode and return the logits and the tapped outputs."""
    try:
        tap = Tap(model, paths, what=what)
    except ModelError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    was_training = model.training
    model.eval()
    param = next(model.parameters(), None)
    inputs = sample if isinstance(sample, tuple) else (sample,)
    if param is not None:  # a teacher held in bf16 takes bf16 images (token ids stay integers)
        inputs = tuple(x.to(param.dtype) if x.is_floating_point() else x for x in inputs)
    try:
        with torch.no_grad():
            logits = model(*inputs).float()
        return logits, dict(tap.outputs)
    finally:
        tap.remove()
        model.train(was_training)


def _observed_tensors(
    objective: Objective, student: nn.Module, teacher: nn.Module, sample: Sample, labels: Tensor, field: str
) -> dict[str, Tensor]:
    """Return every named tensor the terms may read, from one forward pass of each model on the sample."""
    s_logits, s_feats = _probe(student, objective.student_paths(), sample, "student", field)
    t_logits, t_feats = _probe(teacher, objective.teacher_paths(), sample, "teacher", field)
    if s_logits.shape != t_logits.shape:
        raise ModelError(
            f"student logits {tuple(s_logits.shape)} and teacher logits {tuple(t_logits.shape)} "
            "differ: both must predict the same classes"
        )
    return {
        "student.logits": s_logits,
        "teacher.logits": t_logits,
        "labels": labels,
        "index": torch.arange(len(labels), device=labels.device),
        **{f"student:{k}": v for k, v in s_feats.items()},
        **{f"teacher:{k}": v for k, v in t_feats.items()},
    }


def _check_layers(spec: TermSpec, term: Term, tensors: dict[str, Tensor], where: str) -> None:
    """Run the term's own shape check on the observed tensors of its layers."""
    if spec.check is None:
        return
    layers = [k for k in term.inputs if k.startswith(("student:", "teacher:"))]
    half = len(layers) // 2
    student = [(k.split(":", 1)[1], tensors[k]) for k in layers[:half]]
    teacher = [(k.split(":", 1)[1], tensors[k]) for k in layers[half:]]
    try:
        spec.check(student, teacher)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _build_module(
    spec: TermSpec, tc: TermConfig, term: Term, tensors: dict[str, Tensor], where: str, n_data: int | None
) -> nn.Module:
    """Return the loss module of a stateful term, sized from the observed student and teacher features."""
    context = TermContext(str(tc.student), str(tc.teacher), n_data)
    build = spec.build
    if build is None:
        raise ValueError(f"loss {spec.name!r} is stateless: it has no module to build")
    try:
        return build(tensors[term.inputs[0]], tensors[term.inputs[1]], dict(term.kwargs), context)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where} ({tc.loss}): {exc}") from None


def _adapter(
    spec: TermSpec, tc: TermConfig, term: Term, tensors: dict[str, Tensor], where: str
) -> nn.Module | None:
    """Return the adapter a feature term needs between the observed shapes, or None."""
    s_shape = tuple(tensors[term.inputs[0]].shape)
    t_shape = tuple(tensors[term.inputs[1]].shape)
    differ = s_shape != t_shape
    needs = differ and spec.needs_adapter_when_shapes_differ
    want = tc.adapter if tc.adapter != "auto" else ("auto" if needs else "none")
    if want == "none":
        if needs:
            raise ConfigError(
                f"{where}: {tc.loss} student feature {tc.student!r} {s_shape} and teacher feature "
                f"{tc.teacher!r} {t_shape} differ and the adapter is 'none'; set adapter: auto (or conv/linear)"
            )
        return None
    try:
        return adapter_for(s_shape, t_shape, want)
    except ValueError as exc:
        raise ConfigError(f"{where}.adapter: {exc}") from None


def _dry_run(objective: Objective, tensors: dict[str, Tensor], field: str) -> None:
    """Evaluate every term once on the observed tensors, so a mismatch fails now, not mid-training."""
    objective.eval()
    with torch.no_grad():
        for i, term in enumerate(objective.terms):
            try:
                term(tensors, objective.adapters[term.adapter] if term.adapter else None)
            except (TypeError, ValueError, RuntimeError) as exc:
                raise ConfigError(f"{field}[{i}] ({term.name}): {exc}") from None
    objective.train()


def hidden_state_losses(terms: list[TermConfig]) -> list[str]:
    """Return the losses among `terms` that read module outputs (hidden states, feature maps), not logits."""
    return [tc.loss for tc in terms if tc.loss in TERMS and TERMS[tc.loss].reads_features]


def logit_objective(terms: list[TermConfig], field: str = "distill.terms") -> Objective:
    """Return the objective of terms that read logits and labels only (no module paths, nothing to size)."""
    built = []
    for i, tc in enumerate(terms):
        spec = _spec(tc, f"{field}[{i}]")
        if spec.reads_features or spec.stateful:
            raise ConfigError(
                f"{field}[{i}]: loss {tc.loss!r} reads module outputs; only logit terms apply here"
            )
        built.append(_term(spec, tc, f"{field}[{i}]"))
    return Objective(built)


def build_objective(
    terms: list[TermConfig],
    student: nn.Module,
    teacher: nn.Module,
    sample: Sample,
    labels: Tensor,
    field: str = "distill.terms",
    n_data: int | None = None,
) -> Objective:
    """Return the objective of `terms`, with adapters built from the shapes seen on a sample batch.

    `sample` is what the models are called with: an image batch, or a tuple of tensors (token ids and an
    attention mask for sentence models).
    """
    specs: list[TermSpec] = []
    built: list[Term] = []
    for i, tc in enumerate(terms):
        specs.append(_spec(tc, f"{field}[{i}]"))
        built.append(_term(specs[-1], tc, f"{field}[{i}]"))
    tensors = _observed_tensors(Objective(built), student, teacher, sample, labels, field)
    modules: dict[str, nn.Module] = {}
    for i, (spec, tc, term) in enumerate(zip(specs, terms, built)):
        where, key = f"{field}[{i}]", f"term{i}"
        _check_layers(spec, term, tensors, where)
        if spec.stateful:
            module = _build_module(spec, tc, term, tensors, where, n_data)
            modules[key] = module  # trained with the student and saved with the run
            term.fn, term.kwargs = (_flat(module) if spec.kind == "embedding" else module), {}
        elif spec.kind in ("feature", "embedding"):
            adapter = _adapter(spec, tc, term, tensors, where)
            if adapter is not None:
                modules[key] = adapter
                term.adapter = key
    objective = Objective(built, modules=modules)
    _dry_run(objective, tensors, field)
    return objective
