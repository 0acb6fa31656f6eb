"""CIFAR Wide ResNets, layer-for-layer as in RepDistiller (HobbitLong/RepDistiller, models/wrn.py).

WRN-d-k has depth d = 6n + 4 (n pre-activation BasicBlocks per stage) and widths 16, 16k, 32k, 64k.
Parameter names match RepDistiller's, so its state_dicts load as they are.

Module paths a user would tap (forward hooks see the module's output):

- ``conv1``: stem convolution (RepDistiller's f0).
- ``block1``, ``block2``, ``block3``: the three stages (f1, f2, f3); ``block2.layer.0`` is the first
  BasicBlock of stage 2, and so on.
- ``block2.layer.0.bn1``, ``block3.layer.0.bn1``, ``bn1``: BatchNorm before ReLU, i.e. RepDistiller's
  ``preact`` versions of f1, f2, f3 (``get_bn_before_relu``).
- ``relu``: the final activation map before pooling; ``avgpool``: the pooled features (f4, 4-D).
- ``fc`` (alias ``classifier``): the final Linear.

Differences from RepDistiller, none of which changes the function computed:

- the global pool is ``AdaptiveAvgPool2d(1)`` instead of ``F.avg_pool2d(out, 8)``: identical on 32x32
  inputs (8x8 final map), and it also accepts 28x28 inputs (7x7 final map);
- every ReLU is out-of-place, so a hook on a BatchNorm sees the pre-activation rather than a tensor a
  following in-place ReLU has overwritten;
- the first convolution takes ``in_channels`` (RepDistiller: always 3).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kdkit.errors import ModelError
from kdkit.models.registry import register_model


class WideBasicBlock(nn.Module):
    """Pre-activation block: BN-ReLU-conv3x3-BN-ReLU-conv3x3, identity or 1x1-conv shortcut."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_planes, out_planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.drop_rate = drop_rate
        self.equal_in_out = in_planes == out_planes
        # RepDistiller's name, so its state_dict keys ("...convShortcut.weight") load unchanged.
        self.convShortcut = (
            None
            if self.equal_in_out
            else nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, padding=0, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # As in RepDistiller: when the widths differ, the shortcut also takes the activated input.
        act = self.relu1(self.bn1(x))
        if not self.equal_in_out:
            x = act
        out = self.relu2(self.bn2(self.conv1(act)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        out = self.conv2(out)
        shortcut = x if self.convShortcut is None else self.convShortcut(x)
        return shortcut + out


class NetworkBlock(nn.Module):
    """One stage: ``nb_layers`` WideBasicBlocks in ``self.layer``, the first one with ``stride``."""

    def __init__(
        self, nb_layers: int, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0
    ) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            *(
                WideBasicBlock(
                    in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1, drop_rate
                )
                for i in range(nb_layers)
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """WRN-depth-widen_factor for 32x32 (or 28x28) inputs."""

    def __init__(
        self,
        depth: int,
        widen_factor: int = 1,
        num_classes: int = 10,
        in_channels: int = 3,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6 != 0:
            raise ModelError(
                f"WideResNet depth must be 6n+4 with n >= 1 (10, 16, 22, 28, 40, ...), got {depth}"
            )
        if isinstance(widen_factor, bool) or not isinstance(widen_factor, int) or widen_factor < 1:
            raise ModelError(f"widen_factor must be a positive integer, got {widen_factor!r}")
        if not 0.0 <= drop_rate < 1.0:
            raise ModelError(f"drop_rate must be in [0, 1), got {drop_rate!r}")
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        n = (depth - 4) // 6
        self.depth = depth
        self.widen_factor = widen_factor
        self.nChannels = widths[3]  # RepDistiller's attribute name
        self.conv1 = nn.Conv2d(in_channels, widths[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(n, widths[0], widths[1], 1, drop_rate)
        self.block2 = NetworkBlock(n, widths[1], widths[2], 2, drop_rate)
        self.block3 = NetworkBlock(n, widths[2], widths[3], 2, drop_rate)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.relu = nn.ReLU()
        # RepDistiller: F.avg_pool2d(out, 8), the same as this global pool on the 8x8 map of a 32x32 input.
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[3], num_classes)

        # RepDistiller's init: conv weights N(0, 2 / (k*k*out_channels)) (= Kaiming normal, fan_out),
        # BN weight 1 / bias 0, Linear bias 0 (Linear weight keeps PyTorch's default).
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    # `classifier` aliases `fc` without registering the Linear twice (state_dict keys stay "fc.*").
    @property
    def classifier(self) -> nn.Linear:
        """The final Linear layer (alias of ``fc``)."""
        return self.fc

    def __setattr__(self, name: str, value: Any) -> None:
        # Route `model.classifier = ...` to `fc` (nn.Module would otherwise register a second child).
        if name == "classifier":
            name = "fc"
        super().__setattr__(name, value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        out = self.block3(self.block2(self.block1(out)))
        out = self.relu(self.bn1(out))
        out = torch.flatten(self.avgpool(out), 1)
        return self.fc(out)


# image_size is accepted (every factory takes it) but unused: the global pool is size-agnostic.


@register_model("wrn_16_1")
def wrn_16_1(
    num_classes: int = 10, in_channels: int = 3, image_size: int = 32, drop_rate: float = 0.0
) -> WideResNet:
    """RepDistiller wrn_16_1: depth 16, widen factor 1."""
    return WideResNet(16, 1, num_classes=num_classes, in_channels=in_channels, drop_rate=drop_rate)


@register_model("wrn_16_2")
def wrn_16_2(
    num_classes: int = 10, in_channels: int = 3, image_size: int = 32, drop_rate: float = 0.0
) -> WideResNet:
    """RepDistiller wrn_16_2: depth 16, widen factor 2."""
    return WideResNet(16, 2, num_classes=num_classes, in_channels=in_channels, drop_rate=drop_rate)


@register_model("wrn_40_1")
def wrn_40_1(
    num_classes: int = 10, in_channels: int = 3, image_size: int = 32, drop_rate: float = 0.0
) -> WideResNet:
    """RepDistiller wrn_40_1: depth 40, widen factor 1."""
    return WideResNet(40, 1, num_classes=num_classes, in_channels=in_channels, drop_rate=drop_rate)


@register_model("wrn_40_2")
def wrn_40_2(
    num_classes: int = 10, in_channels: int = 3, image_size: int = 32, drop_rate: float = 0.0
) -> WideResNet:
    """RepDistiller wrn_40_2: depth 40, widen factor 2."""
    return WideResNet(40, 2, num_classes=num_classes, in_channels=in_channels, drop_rate=drop_rate)
