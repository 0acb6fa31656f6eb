"""CIFAR VGGs (no FC stack), layer-for-layer as in RepDistiller (HobbitLong/RepDistiller, models/vgg.py).

The registered ``vgg8``, ``vgg11``, ``vgg13``, ``vgg16`` and ``vgg19`` are RepDistiller's ``vgg8_bn``,
``vgg11_bn``, ... (BatchNorm after every conv): the networks KD papers (CRD, ReviewKD, DKD, ...) call
"VGG8", "VGG13". Pass ``batch_norm=False`` for RepDistiller's plain ``vgg8``/``vgg13``/....
Parameter names match RepDistiller's, so its state_dicts load as they are.

Module paths a user would tap (forward hooks see the module's output):

- ``block0`` ... ``block4``: the five conv groups. Each ends with its last BatchNorm (the trailing ReLU
  is split off), so ``block1`` ... ``block4`` are RepDistiller's ``preact`` features f1_pre ... f4_pre.
- ``relu0`` ... ``relu4``: the activated group outputs, RepDistiller's f0 ... f4.
- ``pool0`` ... ``pool3``: max pools after groups 0-3 (``pool3`` only runs on 64x64 inputs, as in
  RepDistiller); ``pool4``: the global average pool (f5, 4-D).
- ``classifier``: the final Linear (512 -> num_classes).

Differences from RepDistiller, none of which changes the function computed:

- the ReLU after each group is a module (``reluK``) instead of ``F.relu``, so it can be tapped;
- ReLUs inside the groups are out-of-place, so a hook on a BatchNorm sees the pre-activation;
- the first convolution takes ``in_channels`` (RepDistiller: always 3). The global pool is adaptive in
  RepDistiller too, so 28x28 inputs work (maps 28, 14, 7, 3, 3).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from kdkit.errors import ModelError
from kdkit.models.init import repdistiller_init_
from kdkit.models.registry import register_model

# RepDistiller's configurations: conv widths per group (a max pool follows each group in forward).
CFGS: dict[str, list[list[int]]] = {
    "A": [[64], [128], [256, 256], [512, 512], [512, 512]],  # vgg11
    "B": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],  # vgg13
    "D": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],  # vgg16
    "E": [[64, 64], [128, 128], [256, 256, 256, 256], [512, 512, 512, 512], [512, 512, 512, 512]],  # vgg19
    "S": [[64], [128], [256], [512], [512]],  # vgg8
}


def _make_group(widths: Sequence[int], batch_norm: bool, in_channels: int) -> nn.Sequential:
    """conv3x3(+bias) [-BN] -ReLU per width, without the final ReLU (forward applies it)."""
    layers: list[nn.Module] = []
    for v in widths:
        layers.append(nn.Conv2d(in_channels, v, kernel_size=3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(v))
        layers.append(nn.ReLU())
        in_channels = v
    return nn.Sequential(*layers[:-1])


class VGG(nn.Module):
    """Five conv groups (max pools between the first four), global average pool, one Linear."""

    def __init__(
        self,
        cfg: Sequence[Sequence[int]],
        batch_norm: bool = True,
        num_classes: int = 10,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if len(cfg) != 5 or any(len(g) == 0 for g in cfg):
            raise ModelError(f"VGG cfg must have 5 non-empty groups of conv widths, got {cfg!r}")
        self.block0 = _make_group(cfg[0], batch_norm, in_channels)
        self.block1 = _make_group(cfg[1], batch_norm, cfg[0][-1])
        self.block2 = _make_group(cfg[2], batch_norm, cfg[1][-1])
        self.block3 = _make_group(cfg[3], batch_norm, cfg[2][-1])
        self.block4 = _make_group(cfg[4], batch_norm, cfg[3][-1])
        self.relu0, self.relu1, self.relu2, self.relu3, self.relu4 = (nn.ReLU() for _ in range(5))
        self.pool0 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool1 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool2 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool3 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool4 = nn.AdaptiveAvgPool2d((1, 1))
        self.classifier = nn.Linear(cfg[4][-1], num_classes)

        # RepDistiller's init: conv N(0, 2 / (k*k*out_channels)) (= Kaiming normal, fan_out) with zero
        # bias, BN weight 1 / bias 0, Linear N(0, 0.01) with zero bias.
        repdistiller_init_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.shape[2]
        x = self.pool0(self.relu0(self.block0(x)))
        x = self.pool1(self.relu1(self.block1(x)))
        x = self.pool2(self.relu2(self.block2(x)))
        x = self.relu3(self.block3(x))
        if h == 64:  # RepDistiller pools once more only for 64x64 (Tiny ImageNet) inputs
            x = self.pool3(x)
        x = self.relu4(self.block4(x))
        x = torch.flatten(self.pool4(x), 1)
        return self.classifier(x)


# image_size is accepted (every factory takes it) but unused: the global pool is size-agnostic.


@register_model("vgg8")
def vgg8(num_classes: int = 10, in_channels: int = 3, image_size: int = 32, batch_norm: bool = True) -> VGG:
    """RepDistiller vgg8_bn (configuration "S"); ``batch_norm=False`` gives its plain vgg8."""
    return VGG(CFGS["S"], batch_norm=batch_norm, num_classes=num_classes, in_channels=in_channels)


@register_model("vgg11")
def vgg11(num_classes: int = 10, in_channels: int = 3, image_size: int = 32, batch_norm: bool = True) -> VGG:
    """RepDistiller vgg11_bn (configuration "A"); ``batch_norm=False`` gives its plain vgg11."""
    return VGG(CFGS["A"], batch_norm=batch_norm, num_classes=num_classes, in_channels=in_channels)


@register_model("vgg13")
def vgg13(num_classes: int = 10, in_channels: int = 3, image_size: int = 32, batch_norm: bool = True) -> VGG:
    """RepDistiller vgg13_bn (configuration "B"); ``batch_norm=False`` gives its plain vgg13."""
    return VGG(CFGS["B"], batch_norm=batch_norm, num_classes=num_classes, in_channels=in_channels)


@register_model("vgg16")
def vgg16(num_classes: int = 10, in_channels: int = 3, image_size: int = 32, batch_norm: bool = True) -> VGG:
    """RepDistiller vgg16_bn (configuration "D"); ``batch_norm=False`` gives its plain vgg16."""
    return VGG(CFGS["D"], batch_norm=batch_norm, num_classes=num_classes, in_channels=in_channels)


@register_model("vgg19")
def vgg19(num_classes: int = 10, in_channels: int = 3, image_size: int = 32, batch_norm: bool = True) -> VGG:
    """RepDistiller vgg19_bn (configuration "E"); ``batch_norm=False`` gives its plain vgg19."""
    return VGG(CFGS["E"], batch_norm=batch_norm, num_classes=num_classes, in_channels=in_channels)
