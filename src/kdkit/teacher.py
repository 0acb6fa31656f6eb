"""Teachers: frozen networks that only ever run forward, in eval mode, without autograd."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class FrozenTeacher(nn.Module):
    """Wrap a trained model so that it is frozen, in `eval()` mode and run under `torch.inference_mode()`.

    With `dtype=torch.bfloat16` the weights are converted once, so no step pays for casting them again.
    """

    def __init__(self, model: nn.Module, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.model = model
        self.dtype = dtype
        self.model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        if dtype is not None:
            self.model.to(dtype)

    def train(self, mode: bool = True) -> FrozenTeacher:
        """Keep the teacher in eval mode whatever the caller asks (dropout and BN statistics stay fixed)."""
        self.model.eval()
        return self

    def forward(self, *inputs: Tensor) -> Tensor:
        """Return the teacher's logits as float32 for its inputs (images; token ids and mask); no autograd."""
        if self.dtype is not None:
            # Only floating-point inputs take the teacher's dtype: token ids and masks stay integers.
            inputs = tuple(t.to(self.dtype) if t.is_floating_point() else t for t in inputs)
        with torch.inference_mode():
            out = self.model(*inputs)
        # inference-mode tensors cannot enter autograd graphs; a plain copy can, at negligible cost.
        return out.float() if out.dtype != torch.float32 else out.clone()
