"""Find the classification head of any model (kdkit's, torchvision's, timm's or a user's)."""

from __future__ import annotations

from torch import nn

from kdkit.errors import ModelError


def get_classifier(model: nn.Module) -> nn.Module:
    """The final classification layer: ``model.classifier`` if it is a Linear, else the last Linear."""
    head = getattr(model, "classifier", None)
    if isinstance(head, nn.Linear):
        return head
    get = getattr(model, "get_classifier", None)  # timm models know their head
    if callable(get):
        head = get()
        if isinstance(head, nn.Module) and not isinstance(head, nn.Identity):
            return head
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ModelError(f"cannot find a classifier (nn.Linear) in {type(model).__name__}")
    return linears[-1]
