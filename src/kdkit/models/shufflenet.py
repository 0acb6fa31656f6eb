"""CIFAR ShuffleNet V1 and V2, layer-for-layer as in RepDistiller (HobbitLong/RepDistiller, models/
ShuffleNetv1.py ``ShuffleV1`` and ShuffleNetv2.py ``ShuffleV2``).

Both use a 1x1 stem at full resolution and three stages that each halve the resolution, so a 32x32
input ends as a 4x4 map before global pooling. Parameter names match RepDistiller's, so its
state_dicts load as they are; RepDistiller initialises neither network explicitly (PyTorch defaults),
and neither does kdkit.

Module paths a user would tap (forward hooks see the module's output):

ShuffleNetV1 (``shufflenetv1``: out planes 240/480/960, blocks 4/8/4, groups 3)
  - ``conv1``, ``bn1``: the stem (``relu`` is its activation, RepDistiller's f0);
  - ``layer1``, ``layer2``, ``layer3``: the stages (f1, f2, f3); ``layer2.0`` is the first Bottleneck
    of stage 2, with ``conv1``/``bn1``/``shuffle1``/``conv2``/``bn2``/``conv3``/``bn3``/``shortcut``;
  - ``layerK.J.relu_out``: the block's final ReLU; a forward *pre*-hook on it sees the pre-activation
    (RepDistiller's ``preact`` on the last block of a stage, e.g. ``layer3.3.relu_out``);
  - ``avgpool``: the pooled features (f4, 4-D); ``linear`` (alias ``classifier``): the final Linear.

ShuffleNetV2 (``shufflenetv2``: net_size 1, out channels 116/232/464/1024, blocks 3/7/3)
  - ``conv1``, ``bn1``: the stem (``relu`` is its activation, f0);
  - ``layer1``, ``layer2``, ``layer3``: the stages (f1, f2, f3); ``layerK.0`` is the DownBlock,
    ``layerK.1`` ... the BasicBlocks (``split``, ``conv1``..``conv3``, ``bn1``..``bn3``, ``shuffle``);
  - ``layerK.J.bn3``: the pre-activation of a BasicBlock's branch (RepDistiller's ``preact`` is the
    concatenation of the untouched half with it);
  - ``conv2``, ``bn2``, ``relu2``: the final 1x1 conv to 1024 channels;
  - ``avgpool``: the pooled features (f4, 4-D); ``linear`` (alias ``classifier``): the final Linear.

Differences from RepDistiller, none of which changes the function computed:

- the global pool is ``AdaptiveAvgPool2d(1)`` instead of ``F.avg_pool2d(out, 4)``: identical on 32x32
  inputs (4x4 final map), and it also accepts 28x28 inputs (4x4 final map as well);
- blocks return one tensor: RepDistiller's last block of a stage returns ``(out, preact)`` for its
  ``is_feat`` API, here the pre-activation is tapped with hooks instead (see above);
- activations are ``nn.ReLU`` modules (``relu``, ``relu_out``, ...) instead of ``F.relu``, so they can
  be tapped; the stem convolution takes ``in_channels`` (RepDistiller: always 3).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from kdkit.models.registry import register_model


class ShuffleBlock(nn.Module):
    """Channel shuffle: [N, g*c, H, W] -> [N, c*g, H, W] (interleave the g groups)."""

    def __init__(self, groups: int = 2) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.size()
        g = self.groups
        return x.view(n, g, c // g, h, w).permute(0, 2, 1, 3, 4).reshape(n, c, h, w)


class _LinearHeadAlias(nn.Module):
    """``classifier`` aliases ``linear`` (RepDistiller's name) without registering the Linear twice."""

    linear: nn.Linear

    @property
    def classifier(self) -> nn.Linear:
        """The final Linear layer (alias of ``linear``)."""
        return self.linear

    def __setattr__(self, name: str, value: Any) -> None:
        # Route `model.classifier = ...` to `linear` (nn.Module would otherwise register a second child).
        if name == "classifier":
            name = "linear"
        super().__setattr__(name, value)


# ---------------------------------------------------------------------------------------------- V1


class ShuffleV1Bottleneck(nn.Module):
    """1x1 group conv - shuffle - 3x3 depthwise - 1x1 group conv; stride 2 concatenates an avg-pooled
    shortcut (so ``out_planes`` excludes the shortcut's channels), stride 1 adds the identity."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, groups: int) -> None:
        super().__init__()
        self.stride = stride
        mid_planes = int(out_planes / 4)
        g = 1 if in_planes == 24 else groups  # the first 1x1 conv after the 24-channel stem is dense
        self.conv1 = nn.Conv2d(in_planes, mid_planes, kernel_size=1, groups=g, bias=False)
        self.bn1 = nn.BatchNorm2d(mid_planes)
        self.relu1 = nn.ReLU()
        self.shuffle1 = ShuffleBlock(groups=g)
        self.conv2 = nn.Conv2d(
            mid_planes, mid_planes, kernel_size=3, stride=stride, padding=1, groups=mid_planes, bias=False
        )
        self.bn2 = nn.BatchNorm2d(mid_planes)
        self.relu2 = nn.ReLU()
        self.conv3 = nn.Conv2d(mid_planes, out_planes, kernel_size=1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = nn.Sequential()
        if stride == 2:
            self.shortcut = nn.Sequential(nn.AvgPool2d(3, stride=2, padding=1))
        self.relu_out = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.shuffle1(self.relu1(self.bn1(self.conv1(x))))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        res = self.shortcut(x)
        preact = torch.cat([out, res], 1) if self.stride == 2 else out + res
        return self.relu_out(preact)


class ShuffleNetV1(_LinearHeadAlias):
    """RepDistiller ShuffleNet (V1): 1x1 stem to 24 channels, three stages, global pool, Linear."""

    def __init__(
        self,
        out_planes: tuple[int, int, int] = (240, 480, 960),
        num_blocks: tuple[int, int, int] = (4, 8, 4),
        groups: int = 3,
        num_classes: int = 10,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 24, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        self.relu = nn.ReLU()
        self._in_planes = 24
        self.layer1 = self._make_layer(out_planes[0], num_blocks[0], groups)
        self.layer2 = self._make_layer(out_planes[1], num_blocks[1], groups)
        self.layer3 = self._make_layer(out_planes[2], num_blocks[2], groups)
        # RepDistiller: F.avg_pool2d(out, 4), the same as this global pool on the 4x4 map of a 32x32 input.
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(out_planes[2], num_classes)

    def _make_layer(self, out_planes: int, num_blocks: int, groups: int) -> nn.Sequential:
        layers = []
        for i in range(num_blocks):
            stride = 2 if i == 0 else 1
            cat_planes = self._in_planes if i == 0 else 0  # the concatenated shortcut fills the rest
            layers.append(ShuffleV1Bottleneck(self._in_planes, out_planes - cat_planes, stride, groups))
            self._in_planes = out_planes
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = torch.flatten(self.avgpool(out), 1)
        return self.linear(out)


# ---------------------------------------------------------------------------------------------- V2


class SplitBlock(nn.Module):
    """Split channels into the first ``ratio`` part and the rest."""

    def __init__(self, ratio: float) -> None:
        super().__init__()
        self.ratio = ratio

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = int(x.size(1) * self.ratio)
        return x[:, :c, :, :], x[:, c:, :, :]


class ShuffleV2BasicBlock(nn.Module):
    """Split; the second half goes 1x1 - 3x3 depthwise - 1x1; concatenate with the first half; shuffle."""

    def __init__(self, in_channels: int, split_ratio: float = 0.5) -> None:
        super().__init__()
        self.split = SplitBlock(split_ratio)
        c = int(in_channels * split_ratio)
        self.conv1 = nn.Conv2d(c, c, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(c, c, kernel_size=3, stride=1, padding=1, groups=c, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.conv3 = nn.Conv2d(c, c, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(c)
        self.relu3 = nn.ReLU()
        self.shuffle = ShuffleBlock()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = self.split(x)
        out = self.relu1(self.bn1(self.conv1(x2)))
        out = self.bn2(self.conv2(out))
        out = self.relu3(self.bn3(self.conv3(out)))
        return self.shuffle(torch.cat([x1, out], 1))


class ShuffleV2DownBlock(nn.Module):
    """Stride-2 block: both branches see the whole input (left: dw3x3-1x1, right: 1x1-dw3x3-1x1)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        mid = out_channels // 2
        # left
        self.conv1 = nn.Conv2d(
            in_channels, in_channels, kernel_size=3, stride=2, padding=1, groups=in_channels, bias=False
        )
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv2 = nn.Conv2d(in_channels, mid, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.relu2 = nn.ReLU()
        # right
        self.conv3 = nn.Conv2d(in_channels, mid, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.relu3 = nn.ReLU()
        self.conv4 = nn.Conv2d(mid, mid, kernel_size=3, stride=2, padding=1, groups=mid, bias=False)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = nn.Conv2d(mid, mid, kernel_size=1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid)
        self.relu5 = nn.ReLU()
        self.shuffle = ShuffleBlock()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out1 = self.relu2(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        out2 = self.bn4(self.conv4(self.relu3(self.bn3(self.conv3(x)))))
        out2 = self.relu5(self.bn5(self.conv5(out2)))
        return self.shuffle(torch.cat([out1, out2], 1))


class ShuffleNetV2(_LinearHeadAlias):
    """RepDistiller ShuffleNetV2 (net_size 1): 1x1 stem to 24 channels, three stages, 1x1 conv, pool, Linear."""

    def __init__(
        self,
        out_channels: tuple[int, int, int, int] = (116, 232, 464, 1024),
        num_blocks: tuple[int, int, int] = (3, 7, 3),
        num_classes: int = 10,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 24, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        self.relu = nn.ReLU()
        self._in_channels = 24
        self.layer1 = self._make_layer(out_channels[0], num_blocks[0])
        self.layer2 = self._make_layer(out_channels[1], num_blocks[1])
        self.layer3 = self._make_layer(out_channels[2], num_blocks[2])
        self.conv2 = nn.Conv2d(
            out_channels[2], out_channels[3], kernel_size=1, stride=1, padding=0, bias=False
        )
        self.bn2 = nn.BatchNorm2d(out_channels[3])
        self.relu2 = nn.ReLU()
        # RepDistiller: F.avg_pool2d(out, 4), the same as this global pool on the 4x4 map of a 32x32 input.
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(out_channels[3], num_classes)

    def _make_layer(self, out_channels: int, num_blocks: int) -> nn.Sequential:
        layers: list[nn.Module] = [ShuffleV2DownBlock(self._in_channels, out_channels)]
        layers.extend(ShuffleV2BasicBlock(out_channels) for _ in range(num_blocks))
        self._in_channels = out_channels
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = torch.flatten(self.avgpool(out), 1)
        return self.linear(out)


# image_size is accepted (every factory takes it) but unused: the global pool is size-agnostic.


@register_model("shufflenetv1")
def shufflenetv1(num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> ShuffleNetV1:
    """RepDistiller ShuffleV1: out planes 240/480/960, blocks 4/8/4, 3 groups."""
    return ShuffleNetV1(num_classes=num_classes, in_channels=in_channels)


@register_model("shufflenetv2")
def shufflenetv2(num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> ShuffleNetV2:
    """RepDistiller ShuffleV2 (net_size 1): out channels 116/232/464/1024, blocks 3/7/3."""
    return ShuffleNetV2(num_classes=num_classes, in_channels=in_channels)
