"""An objective is a weighted sum of loss terms, each reading named tensors of one training step."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError
from torch import Tensor, nn

from kdkit.config.distill import ResponseLossConfig
from kdkit.terms.registry import response_names, term_spec, token_names


@dataclass
class Term:
    """One weighted loss over named tensors, e.g. kd(student.logits, teacher.logits, temperature=4)."""

    name: str
    fn: Callable[..., Tensor]
    inputs: tuple[str, ...]
    weight: float = 1.0
    kwargs: dict[str, Any] = field(default_factory=dict)
    adapter: str | None = None  # key of an adapter in the objective, applied to the first input
    start_epoch: float = 0.0  # active from this (fractional) epoch ...
    stop_epoch: float | None = None  # ... until this one (FitNets' two stages, for instance)
    warmup_epochs: float = 0.0  # weight ramps linearly from 0 over these epochs (DKD)

    def factor(self, epoch: float) -> float:
        """Return the multiplier of the weight at a (fractional) epoch: 0 outside its window, ramped in warm-up."""
        if epoch < self.start_epoch or (self.stop_epoch is not None and epoch >= self.stop_epoch):
            return 0.0
        if self.warmup_epochs > 0:
            return min(1.0, (epoch - self.start_epoch) / self.warmup_epochs)
        return 1.0

    @classmethod
    def from_name(cls, loss: str, weight: float = 1.0, **kwargs: Any) -> Term:
        """Return the term of a registered loss over logits/labels, with its inputs and checked options."""
        spec = term_spec(loss)
        if spec.reads_features or spec.stateful:
            raise KeyError(
                f"loss {loss!r} reads module outputs: build it with kdkit.objective_builder.build_objective "
                "(distill.terms with student/teacher paths)"
            )
        options = spec.validate_options(kwargs)  # ValueError naming the loss and the option
        return cls(name=loss, fn=spec.fn, inputs=spec.logit_inputs, weight=weight, kwargs=options)

    def __call__(self, tensors: Mapping[str, Tensor], adapter: nn.Module | None = None) -> Tensor:
        """Return the unweighted value of this term on the step's named tensors."""
        missing = [k for k in self.inputs if k not in tensors]
        if missing:
            raise KeyError(f"loss term {self.name!r} needs {missing}; this step has {sorted(tensors)}")
        args = [tensors[k] for k in self.inputs]
        if adapter is not None:
            args[0] = adapter(args[0])
        return self.fn(*args, **self.kwargs)


def _check_response(**given: Any) -> None:
    """Raise ValueError naming each bad argument, with the limits `distill.*` has in a config."""
    # The same model validates distill.loss/temperature/alpha/beta/mix in YAML: one rule, one message style.
    try:
        ResponseLossConfig.model_validate(given)
    except ValidationError as exc:
        lines = ["invalid arguments (Objective.response):"]
        for e in exc.errors():
            msg = e["msg"].removeprefix("Value error, ")
            if e["loc"]:
                lines.append(f"  {'.'.join(str(p) for p in e['loc'])}: {msg} (got {e.get('input')!r})")
            else:
                lines.append(f"  {msg}")
        raise ValueError("\n".join(lines)) from None


class Objective(nn.Module):
    """Weighted sum of terms; a module so that terms with parameters (adapters) train with the student."""

    def __init__(self, terms: list[Term], modules: Mapping[str, nn.Module] | None = None) -> None:
        super().__init__()
        if not terms:
            raise ValueError("an objective needs at least one term")
        self.terms = terms
        # Trainable parts (regressors, adapters) registered here are saved and optimised with the student.
        self.adapters = nn.ModuleDict(dict(modules or {}))
        missing = [t.adapter for t in terms if t.adapter is not None and t.adapter not in self.adapters]
        if missing:
            raise ValueError(f"terms name adapters {missing} that the objective does not hold")
        self.epoch = 0.0  # set by the engine before each step; drives term windows and warm-up

    def _paths(self, prefix: str) -> list[str]:
        return list(
            dict.fromkeys(k[len(prefix) :] for t in self.terms for k in t.inputs if k.startswith(prefix))
        )

    def student_paths(self) -> list[str]:
        """Return the student module paths whose outputs the terms read."""
        return self._paths("student:")

    def teacher_paths(self) -> list[str]:
        """Return the teacher module paths whose outputs the terms read."""
        return self._paths("teacher:")

    @property
    def needs_teacher(self) -> bool:
        """Return True when any term reads a teacher tensor."""
        return any(k.startswith("teacher") for t in self.terms for k in t.inputs)

    @property
    def needs_teacher_features(self) -> bool:
        """Return True when any term reads an intermediate teacher output (so logits alone cannot be cached)."""
        return bool(self.teacher_paths())

    def forward(self, tensors: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """Return the weighted total and each term's unweighted value (detached tensors, no host sync)."""
        total: Tensor | None = None
        parts: dict[str, Tensor] = {}
        for term in self.terms:
            factor = term.factor(self.epoch)
            if factor == 0.0:
                continue
            value = term(tensors, self.adapters[term.adapter] if term.adapter else None)
            key = term.name if term.name not in parts else f"{term.name}.{len(parts)}"
            parts[key] = value.detach()
            weighted = value * (term.weight * factor)
            total = weighted if total is None else total + weighted
        if total is None:
            raise ValueError(
                f"no loss term is active at epoch {self.epoch:.2f}: check the terms' epoch windows"
            )
        return total, parts

    @staticmethod
    def hard_labels(label_smoothing: float = 0.0) -> Objective:
        """Return the plain supervised objective: cross-entropy on the labels."""
        return Objective([Term.from_name("ce", 1.0, label_smoothing=label_smoothing)])

    @staticmethod
    def response(
        loss: str = "kd",
        alpha: float = 0.9,
        beta: float = 0.1,
        temperature: float = 4.0,
        mix: float = 0.5,
        label_smoothing: float = 0.0,
    ) -> Objective:
        """Return alpha * <soft loss>(student, teacher) + beta * CE(labels), the Hinton et al. recipe."""
        if loss not in response_names() and loss not in token_names():
            raise KeyError(
                f"loss {loss!r} is not a response loss; known: {response_names()} (per token: {token_names()})"
            )
        _check_response(loss=loss, alpha=alpha, beta=beta, temperature=temperature, mix=mix)
        given = {"temperature": temperature, "mix": mix}
        kwargs = {k: v for k, v in given.items() if k in term_spec(loss).option_names()}
        terms = []
        if alpha:
            terms.append(Term.from_name(loss, alpha, **kwargs))
        if beta:
            terms.append(Term.from_name("ce", beta, label_smoothing=label_smoothing))
        return Objective(terms)
