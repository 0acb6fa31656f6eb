"""What a stateful term trains before distillation (factor transfer's paraphraser), described as data.

The stage names its model and the loss over that model's tapped outputs; `kdkit.pretrain` turns it into an
objective and trains it with the engine, so no term module depends on the engine.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor, nn


def _nothing() -> None:
    return None


@dataclass
class PretrainStage:
    """What one term trains before distillation: a model over the batch images and the loss of its taps."""

    name: str
    model: nn.Module  # forward(images) -> (batch, classes) logits; the loss reads its taps
    loss_name: str  # the loss's name in the logged metrics (loss.<loss_name>)
    loss: Callable[..., Tensor]
    inputs: tuple[str, ...]  # named tensors the loss reads, e.g. "student:paraphraser.decoder"
    epochs: int
    lr: float
    finish: Callable[[], None]  # called once the stage is trained (e.g. freeze the trained module)
    close: Callable[[], None] = _nothing  # release hooks the stage model holds on the teacher
