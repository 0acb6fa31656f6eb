"""Teachers: frozen networks that only ever run forward, in eval mode, without autograd."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class FrozenTeacher(nn.Module):
    """Wrap a trained model so that it is frozen, in `eval()` mode and run under `torch.inference_mode()`."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True) -> FrozenTeacher:
        """Keep the teacher in eval mode whatever the caller asks (dropout and BN statistics stay fixed)."""
        self.model.eval()
        return self

    def forward(self, x: Tensor) -> Tensor:
        """Return the teacher's logits; the result carries no autograd history."""
        with torch.inference_mode():
            out = self.model(x)
        # inference-mode tensors cannot enter autograd graphs; a plain clone can, at negligible cost.
        return out.clone()
