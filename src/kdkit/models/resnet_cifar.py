"""CIFAR ResNets, layer-for-layer as in RepDistiller (HobbitLong/RepDistiller, models/resnet.py).

Distillation papers (CRD, ReviewKD, DKD, ...) report results on exactly these networks, so the
structure, parameter counts and initialisation must match for results to be comparable.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from kdkit.errors import ModelError
from kdkit.models.registry import register_model


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution with padding 1 and no bias (BN follows)."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convs with BN and an identity or 1x1-conv+BN shortcut."""

    expansion = 1

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        # A separate, non-inplace module for the post-addition ReLU: a forward pre-hook on
        # "layerK.i.relu_out" then sees the pre-activation (what RepDistiller returns as `preact`).
        self.relu_out = nn.ReLU(inplace=False)
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu_out(out + residual)


class ResNet(nn.Module):
    """CIFAR ResNet of depth 6n+2: conv1/bn1, three stages of n BasicBlocks, global pool, fc."""

    def __init__(
        self,
        depth: int,
        num_filters: Sequence[int],
        num_classes: int = 10,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6 != 0:
            raise ModelError(f"CIFAR ResNet depth must be 6n+2 with n >= 1 (8, 14, 20, ...), got {depth}")
        if len(num_filters) != 4:
            raise ModelError(f"num_filters must have 4 entries (stem, stage1-3), got {list(num_filters)}")
        n = (depth - 2) // 6
        block = BasicBlock
        self.depth = depth
        self.inplanes = num_filters[0]
        self.conv1 = nn.Conv2d(in_channels, num_filters[0], kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(num_filters[0])
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(block, num_filters[1], n)
        self.layer2 = self._make_layer(block, num_filters[2], n, stride=2)
        self.layer3 = self._make_layer(block, num_filters[3], n, stride=2)
        # RepDistiller uses AvgPool2d(8), i.e. a global pool for 32x32 inputs; the adaptive form is
        # numerically identical there and also works for other sizes (e.g. 28x28 MNIST).
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(num_filters[3] * block.expansion, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(
        self, block: type[BasicBlock], planes: int, blocks: int, stride: int = 1
    ) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers.extend(block(self.inplanes, planes) for _ in range(1, blocks))
        return nn.Sequential(*layers)

    # `classifier` aliases `fc` without registering the Linear twice (state_dict keys stay "fc.*").
    @property
    def classifier(self) -> nn.Linear:
        """The final Linear layer (alias of ``fc``)."""
        return self.fc

    def __setattr__(self, name: str, value: Any) -> None:
        # nn.Module.__setattr__ would register a Module assigned to `classifier` as a new child,
        # bypassing the property; route it to `fc` so replacing the head works as expected.
        if name == "classifier":
            name = "fc"
        super().__setattr__(name, value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


_CIFAR_WIDTHS = (16, 16, 32, 64)
_X4_WIDTHS = (32, 64, 128, 256)


# image_size is accepted (every factory takes it) but unused: the global pool is size-agnostic.


@register_model("resnet8")
def resnet8(num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> ResNet:
    """RepDistiller resnet8: depth 8, widths 16/16/32/64."""
    return ResNet(8, _CIFAR_WIDTHS, num_classes=num_classes, in_channels=in_channels)


@register_model("resnet14")
def resnet14(num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> ResNet:
    """RepDistiller resnet14: depth 14, widths 16/16/32/64."""
    return ResNet(14, _CIFAR_WIDTHS, num_classes=num_classes, in_channels=in_channels)


@register_model("resnet20")
def resnet20(num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> ResNet:
    """RepDistiller resnet20: depth 20, widths 16/16/32/64."""
    return ResNet(20, _CIFAR_WIDTHS, num_classes=num_classes, in_channels=in_channels)


@register_model("resnet32")
def resnet32(num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> ResNet:
    """RepDistiller resnet32: depth 32, widths 16/16/32/64."""
    return ResNet(32, _CIFAR_WIDTHS, num_classes=num_classes, in_channels=in_channels)


@register_model("resnet44")
def resnet44(num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> ResNet:
    """RepDistiller resnet44: depth 44, widths 16/16/32/64."""
    return ResNet(44, _CIFAR_WIDTHS, num_classes=num_classes, in_channels=in_channels)


@register_model("resnet56")
def resnet56(num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> ResNet:
    """RepDistiller resnet56: depth 56, widths 16/16/32/64."""
    return ResNet(56, _CIFAR_WIDTHS, num_classes=num_classes, in_channels=in_channels)


@register_model("resnet110")
def resnet110(num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> ResNet:
    """RepDistiller resnet110: depth 110, widths 16/16/32/64."""
    return ResNet(110, _CIFAR_WIDTHS, num_classes=num_classes, in_channels=in_channels)


@register_model("resnet8x4")
def resnet8x4(num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> ResNet:
    """RepDistiller resnet8x4: depth 8, widths 32/64/128/256."""
    return ResNet(8, _X4_WIDTHS, num_classes=num_classes, in_channels=in_channels)


@register_model("resnet32x4")
def resnet32x4(num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> ResNet:
    """RepDistiller resnet32x4: depth 32, widths 32/64/128/256."""
    return ResNet(32, _X4_WIDTHS, num_classes=num_classes, in_channels=in_channels)
