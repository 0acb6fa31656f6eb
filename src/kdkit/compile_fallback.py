"""torch.compile with a fallback: if compiling fails at the first call, the phase trains eagerly instead."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn


class CompiledOrEager:
    """Call a compiled model; if its first call fails, say why and call the eager model from then on."""

    def __init__(self, model: nn.Module, compile: bool, warn: Callable[[str], None]) -> None:
        self.eager = model
        self.current: Callable[..., Tensor] = torch.compile(model) if compile else model
        self._settled = not compile
        self._warn = warn

    def __call__(self, *inputs: Tensor) -> Any:
        """Return the model's output for the inputs."""
        if self._settled:
            return self.current(*inputs)
        # The first call compiles; any compiler failure there means "train eagerly".
        try:
            out = self.current(*inputs)
        except Exception as exc:  # noqa: BLE001 - any compiler failure means "fall back"
            self._warn(
                f"torch.compile failed ({type(exc).__name__}: {str(exc)[:200]}); continuing without compilation"
            )
            self.current = self.eager
            out = self.current(*inputs)
        self._settled = True
        return out
