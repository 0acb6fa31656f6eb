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


def backbone_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Return every parameter of a model but its classifier head's (what fine-tuning scales or freezes)."""
    head = {id(p) for p in get_classifier(model).parameters()}
    return [p for p in model.parameters() if id(p) not in head]
