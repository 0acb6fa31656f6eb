"""Small configurable conv net for MNIST/CIFAR-sized inputs."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from kdkit.errors import ModelError
from kdkit.models.registry import register_model


@register_model("cnn")
class CNN(nn.Module):
    """[Conv3x3 -> BN -> ReLU -> MaxPool2] per width, global average pool, dropout, Linear."""

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        image_size: int = 32,
        channels: int | Sequence[int] = (32, 64, 128),
        dropout: float = 0.0,
        batch_norm: bool = True,
    ) -> None:
        super().__init__()
        widths = [channels] if isinstance(channels, int) else list(channels)
        if not widths or any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in widths):
            raise ModelError(f"channels must be a non-empty list of positive integers, got {channels!r}")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
            raise ModelError(f"dropout must be a probability in [0, 1), got {dropout!r}")
        # Each block halves the resolution; an empty feature map would fail deep inside forward().
        if image_size // 2 ** len(widths) < 1:
            raise ModelError(
                f"image_size {image_size} is too small for {len(widths)} pooling blocks "
                f"(needs >= {2 ** len(widths)}); use fewer channels entries"
            )

        blocks: OrderedDict[str, nn.Module] = OrderedDict()
        prev = in_channels
        for i, width in enumerate(widths, start=1):
            block: OrderedDict[str, nn.Module] = OrderedDict()
            # BN makes the conv bias redundant.
            block["conv"] = nn.Conv2d(prev, width, kernel_size=3, padding=1, bias=not batch_norm)
            if batch_norm:
                block["bn"] = nn.BatchNorm2d(width)
            block["relu"] = nn.ReLU(inplace=True)
            block["pool"] = nn.MaxPool2d(2)
            blocks[f"block{i}"] = nn.Sequential(block)
            prev = width
        self.features = nn.Sequential(blocks)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.dropout = nn.Dropout(float(dropout))
        self.classifier = nn.Linear(prev, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.flatten(self.avgpool(self.features(x)))
        return self.classifier(self.dropout(x))
