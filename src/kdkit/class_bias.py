"""Hinton et al.'s class-bias adjustment: raise the output bias of classes a student never saw."""

from __future__ import annotations

import torch
from torch import nn

from kdkit.errors import ConfigError, ModelError


def bias_head(model: nn.Module) -> nn.Module:
    """Return the model's `classifier` layer, or raise ModelError when it has none with a bias."""
    head = getattr(model, "classifier", None)
    if head is None or getattr(head, "bias", None) is None:
        raise ModelError(
            f"class_bias needs a model with a `classifier` layer that has a bias; {type(model).__name__} has none"
        )
    return head


def adjust_class_bias(model: nn.Module, class_bias: dict[int, float]) -> None:
    """Add the given amounts to the output bias of these classes (Hinton et al. 2015, section 3)."""
    head = bias_head(model)
    with torch.no_grad():
        for c, v in class_bias.items():
            if not 0 <= c < head.bias.shape[0]:
                raise ConfigError(
                    f"distill.class_bias: class {c} is out of range 0..{head.bias.shape[0] - 1}"
                )
            head.bias[c] += v
