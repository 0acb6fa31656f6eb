"""Weight initialisation shared by the zoo's RepDistiller-style models."""

from __future__ import annotations

from torch import nn


def repdistiller_init_(model: nn.Module, linear_std: float = 0.01) -> None:
    """Initialise in place as RepDistiller does: conv Kaiming normal (fan_out), BN 1/0, Linear N(0, std)/0."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, linear_std)
            nn.init.zeros_(m.bias)
