"""A cohort: several models trained in one step by the one engine (joint teacher/student, mutual peers).

The engine sees one `nn.Module`: its parameters are optimised together, its state is checkpointed and
resumed as one, and its forward returns the primary member's logits (train accuracy, compile, DDP). Every
member's logits of the step are also handed to the objective as `<name>.logits` (by its step provider,
`kdkit.steps.CohortStep`), so a loss term can read the others' predictions as it reads a frozen teacher's.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn


class Cohort(nn.Module):
    """Models trained together; forward returns the primary's logits and keeps every member's for the objective.

    In eval mode only the primary runs (evaluation of the others goes through `members`).
    """

    def __init__(self, members: Mapping[str, nn.Module], primary: str) -> None:
        super().__init__()
        if primary not in members:
            raise ValueError(f"primary member {primary!r} is not among {sorted(members)}")
        if len(members) < 2:
            raise ValueError("a cohort needs at least two members")
        self.members = nn.ModuleDict(dict(members))
        self.primary = primary
        self.outputs: dict[str, Tensor] = {}

    def forward(self, *inputs: Tensor) -> Tensor:
        """Return the primary's logits (of images, or token ids and mask); in training mode also run every member
        and keep their logits."""
        if not self.training:
            return self.members[self.primary](*inputs)
        self.outputs = {name: m(*inputs) for name, m in self.members.items()}
        return self.outputs[self.primary]

    def step_tensors(self) -> dict[str, Tensor]:
        """Return the last training step's logits of every member as `<name>.logits`."""
        return {f"{name}.logits": v for name, v in self.outputs.items()}

    def provides(self) -> set[str]:
        """Return the names of the tensors `step_tensors` hands to the objective."""
        return {f"{name}.logits" for name in self.members}
