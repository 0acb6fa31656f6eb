"""The registry of loss terms: what each term reads, its options, how it is built, where it comes from.

Every loss term of kdkit is declared once, as a `TermSpec` in its own module of `kdkit.terms`; the
config (loss names, options), `build_objective`, `Objective.response` and the README list all read this
registry. The math stays in `kdkit.losses` (the plain function is the reference); a spec only says how an
objective uses it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, ValidationError
from torch import Tensor, nn

# What a term reads; the named tensors follow from it:
#   logits         student.logits, teacher.logits
#   logits_labels  student.logits, teacher.logits, labels
#   labels         student.logits, labels (hard-label cross-entropy: no teacher)
#   feature        student:<path>, teacher:<path>, compared as they come
#   embedding      student:<path>, teacher:<path>, flattened to (batch, -1) first
#   layer_lists    student:<p1>..student:<pn>, teacher:<p1>..teacher:<pn> (a list of layers per side)
Kind = Literal["logits", "logits_labels", "labels", "feature", "embedding", "layer_lists"]
KINDS: tuple[str, ...] = get_args(Kind)
FEATURE_KINDS = ("feature", "embedding", "layer_lists")

_LOGIT_INPUTS: dict[str, tuple[str, ...]] = {
    "logits": ("student.logits", "teacher.logits"),
    "logits_labels": ("student.logits", "teacher.logits", "labels"),
    "labels": ("student.logits", "labels"),
}


class Options(BaseModel):
    """Base of a term's options model (a term that takes none uses it as is): unknown keys are refused."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class TermContext:
    """What a stateful term's `build` may need beyond the sample features."""

    student_path: str
    teacher_path: str
    n_data: int | None  # size of the transfer set (a memory bank has one row per image)


# build(student_feature, teacher_feature, options, context) -> the term's loss module
BuildFn = Callable[[Tensor, Tensor, dict[str, Any], TermContext], nn.Module]
# check(student [(path, tensor)], teacher [(path, tensor)]) raises ValueError on shapes a term cannot take
CheckFn = Callable[[Sequence[tuple[str, Tensor]], Sequence[tuple[str, Tensor]]], None]


@dataclass(frozen=True)
class TermSpec:
    """One loss term: its name, what it reads, its options, and its function or the factory of its module."""

    name: str
    kind: Kind
    description: str  # one line for the README list
    reference: str  # the paper (authors year) or "" for plain supervised terms
    fn: Callable[..., Tensor] | None = None  # stateless: called on the inputs with the options
    build: BuildFn | None = None  # stateful: a module sized from observed features, trained with the student
    options: type[BaseModel] = Options
    needs_adapter_when_shapes_differ: bool = False
    response: bool = False  # usable as distill.loss: alpha * loss(student, teacher) + beta * CE
    token: bool = False  # a per-token divergence: usable as distill.loss on language-model text
    extra_inputs: tuple[str, ...] = ()  # further named tensors read after the kind's (crd: "index")
    check: CheckFn | None = None  # refuses observed shapes before the dry run, with the term's own reasons

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ValueError(f"term name {self.name!r} must be an identifier (it is a config value)")
        if self.kind not in KINDS:
            raise ValueError(f"term {self.name!r}: kind {self.kind!r} is not one of {list(KINDS)}")
        if (self.fn is None) == (self.build is None):
            raise ValueError(f"term {self.name!r} needs exactly one of fn (stateless) or build (stateful)")
        if self.build is not None and self.kind not in ("feature", "embedding"):
            raise ValueError(
                f"stateful term {self.name!r} must read one feature per side (feature/embedding)"
            )
        if self.response and self.kind != "logits":
            raise ValueError(f"response term {self.name!r} must read student and teacher logits only")

    @property
    def stateful(self) -> bool:
        """Return True when the term is a module built from observed features (parameters or buffers)."""
        return self.build is not None

    @property
    def reads_features(self) -> bool:
        """Return True when the term reads intermediate outputs (module paths) rather than logits."""
        return self.kind in FEATURE_KINDS

    @property
    def reads_teacher_features(self) -> bool:
        """Return True when the term reads teacher features (so teacher outputs must come online).

        Every feature kind reads one or more outputs on both sides, so this is `reads_features` today; callers
        deciding how teacher outputs arrive ask this question.
        """
        return self.reads_features

    @property
    def logit_inputs(self) -> tuple[str, ...]:
        """Return the named tensors of a term over logits/labels (no module paths)."""
        if self.reads_features:
            raise ValueError(
                f"loss {self.name!r} reads module outputs: its inputs need student/teacher paths"
            )
        return _LOGIT_INPUTS[self.kind] + self.extra_inputs

    def option_names(self) -> list[str]:
        """Return the names of the options this term takes."""
        return list(self.options.model_fields)

    def validate_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """Return the given options checked and converted by the term's options model, or raise ValueError."""
        if not isinstance(options, Mapping):
            raise ValueError(f"options of loss {self.name!r} must be a mapping, got {type(options).__name__}")
        try:
            model = self.options.model_validate(dict(options))
        except ValidationError as exc:
            raise ValueError(self._options_message(exc)) from None
        return model.model_dump(include=set(options))

    def _options_message(self, exc: ValidationError) -> str:
        known = self.option_names()
        takes = f"it takes {', '.join(known)}" if known else f"{self.name} takes no options"
        parts = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"]) or "<options>"
            if err["type"] == "extra_forbidden":
                parts.append(f"unknown option {key!r} of loss {self.name!r} ({takes})")
            else:
                msg = err["msg"].removeprefix("Value error, ")
                parts.append(f"option {key!r} of loss {self.name!r}: {msg} (got {err.get('input')!r})")
        return "; ".join(parts)


TERMS: dict[str, TermSpec] = {}


def register(spec: TermSpec) -> TermSpec:
    """Add a term to the registry and return it; a name may be registered once."""
    if spec.name in TERMS:
        raise ValueError(f"loss term {spec.name!r} is already registered")
    TERMS[spec.name] = spec
    return spec


def unregister(name: str) -> TermSpec:
    """Remove a term from the registry and return its spec."""
    return TERMS.pop(term_spec(name).name)


def term_spec(name: str) -> TermSpec:
    """Return the spec of a registered term, or raise KeyError listing the known names."""
    spec = TERMS.get(name)
    if spec is None:
        raise KeyError(f"unknown loss {name!r}; known: {sorted(TERMS)}")
    return spec


def response_names() -> list[str]:
    """Return the names usable as a response loss (distill.loss: alpha * loss + beta * CE)."""
    return [name for name, spec in TERMS.items() if spec.response]


def token_names() -> list[str]:
    """Return the per-token divergences usable as distill.loss on language-model text (alpha * loss + beta * CE)."""
    return [name for name, spec in TERMS.items() if spec.token]


def terms_markdown() -> str:
    """Return the README list of loss terms, one bullet per registered term."""
    lines = []
    for spec in TERMS.values():
        opts = f" Options: {', '.join(f'`{o}`' for o in spec.option_names())}." if spec.option_names() else ""
        ref = f" ({spec.reference})" if spec.reference else ""
        state = (
            " Stateful: built from the observed shapes, trained and saved with the run."
            if spec.stateful
            else ""
        )
        lines.append(f"- `{spec.name}`: {spec.description}{ref}.{opts}{state}")
    return "\n".join(lines)
