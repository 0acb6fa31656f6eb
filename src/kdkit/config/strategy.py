"""Who teaches whom: the strategy section (offline, joint, mutual, born-again, TAKD)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from kdkit.config.base import ModelSpec, PhaseModel, _Strict

StrategyKind = Literal["offline", "joint", "mutual", "born_again", "takd"]

# Which strategy kinds each option of the strategy section belongs to (setting it for another kind is an error).
_STRATEGY_OPTIONS: dict[str, tuple[str, ...]] = {
    "stop_teacher_gradient": ("joint",),
    "teacher_ce_weight": ("joint",),
    "peers": ("mutual",),
    "num_peers": ("mutual",),
    "generations": ("born_again",),
    "assistant": ("takd",),
}


class StrategyConfig(_Strict):
    """Who teaches whom and when; the distill section says what is matched (loss, temperature, alpha, beta).

    offline: a trained, frozen teacher teaches the student (the default). joint: teacher and student train
    together from the start (Apprentice). mutual: peers learn from the labels and from each other (DML).
    born_again: generations of the teacher's architecture, each taught by the previous one. takd: teacher ->
    assistant -> student.
    """

    kind: StrategyKind = Field(
        "offline", description="offline, joint, mutual, born_again or takd (see the section's description)"
    )
    stop_teacher_gradient: bool = Field(
        False, description="joint: the distillation term sends no gradient into the teacher"
    )
    teacher_ce_weight: float = Field(1.0, ge=0, description="joint: weight of the teacher's cross-entropy")
    peers: list[ModelSpec] | None = Field(
        None,
        min_length=2,
        description="mutual: the peers' architectures (default: num_peers x student.model)",
    )
    num_peers: int = Field(
        2, ge=2, le=16, description="mutual: how many copies of student.model learn together"
    )
    generations: int = Field(
        2, ge=1, le=20, description="born_again: distilled generations after the teacher"
    )
    assistant: PhaseModel | None = Field(
        None, description="takd: the teaching assistant, distilled from the teacher, teaching the student"
    )

    @model_validator(mode="after")
    def _options_of_kind(self) -> StrategyConfig:
        for key in sorted(self.model_fields_set):
            kinds = _STRATEGY_OPTIONS.get(key)
            # A saved config writes every default out: only a changed value for another kind is an error.
            if (
                kinds
                and self.kind not in kinds
                and getattr(self, key) != type(self).model_fields[key].default
            ):
                raise ValueError(f"{key} applies to kind {' or '.join(kinds)}, not {self.kind!r}")
        if self.kind == "takd" and self.assistant is None:
            raise ValueError("kind 'takd' needs an assistant: {model: {...}, train: {...}}")
        if (
            self.peers is not None
            and "num_peers" in self.model_fields_set
            and self.num_peers != len(self.peers)
        ):
            raise ValueError(f"num_peers is {self.num_peers} but {len(self.peers)} peers are listed; set one")
        return self

    def peer_specs(self, student: ModelSpec) -> list[ModelSpec]:
        """Return the architectures of the mutual-learning peers."""
        return list(self.peers) if self.peers is not None else [student] * self.num_peers
