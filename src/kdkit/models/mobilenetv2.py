"""CIFAR MobileNetV2, layer-for-layer as in RepDistiller (HobbitLong/RepDistiller, models/mobilenetv2.py).

The registered ``mobilenetv2`` is RepDistiller's ``mobile_half`` (the "MobileNetV2" of the KD papers):
width multiplier 0.5, expansion ratio T=6, a stride-2 stem and CIFAR strides (1, 1, 2, 2, 1, 2, 1), so a
32x32 input ends as a 2x2 map of 1280 channels before global pooling.

Module paths a user would tap (forward hooks see the module's output):

- ``conv1``: the stem (conv-BN-ReLU, RepDistiller's f0); ``conv1.1`` is its BatchNorm.
- ``blocks.0`` ... ``blocks.6``: the seven inverted-residual stages; RepDistiller's features are
  ``blocks.1`` (f1), ``blocks.2`` (f2), ``blocks.4`` (f3), ``blocks.6`` (f4). ``blocks.2.1`` is the
  second InvertedResidual of stage 2, ``blocks.2.1.conv`` its conv stack.
- ``blocks.K.J.conv.7``: the last (linear-bottleneck) BatchNorm of a block, as used by
  RepDistiller's ``get_bn_before_relu`` (``blocks.1.1.conv.7``, ``blocks.2.2.conv.7``, ...).
- ``conv2``: the final 1x1 conv-BN-ReLU to 1280 channels; ``avgpool``: the pooled features (f5, 4-D).
- ``classifier``: the final Linear.

Differences from RepDistiller, none of which changes the function computed:

- ``classifier`` is the Linear itself, not ``nn.Sequential(Linear)``; RepDistiller state_dicts (keys
  ``classifier.0.weight`` / ``classifier.0.bias``) still load, through a load_state_dict pre-hook;
- the global pool is ``AdaptiveAvgPool2d(1)`` instead of ``AvgPool2d(input_size // 16, ceil_mode=True)``
  (and no ``input_size % 32 == 0`` assertion): identical on 32x32 inputs (2x2 final map), and it also
  accepts 28x28 inputs (2x2 final map as well);
- ReLUs are out-of-place, so a hook on a BatchNorm sees the pre-activation;
- the stem convolution takes ``in_channels`` (RepDistiller: always 3); RepDistiller's ``remove_avg``
  option and its debug ``print(T, width_mult)`` are left out.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from kdkit.errors import ModelError
from kdkit.models.init import repdistiller_init_
from kdkit.models.registry import register_model

# (expansion t, output channels c, repeats n, first stride s); t=None means "use T".
_SETTING: tuple[tuple[int | None, int, int, int], ...] = (
    (1, 16, 1, 1),
    (None, 24, 2, 1),
    (None, 32, 3, 2),
    (None, 64, 4, 2),
    (None, 96, 3, 1),
    (None, 160, 3, 2),
    (None, 320, 1, 1),
)


def conv_bn(inp: int, oup: int, stride: int) -> nn.Sequential:
    """3x3 conv (no bias), BN, ReLU."""
    return nn.Sequential(
        nn.Conv2d(inp, oup, 3, stride, 1, bias=False),
        nn.BatchNorm2d(oup),
        nn.ReLU(),
    )


def conv_1x1_bn(inp: int, oup: int) -> nn.Sequential:
    """1x1 conv (no bias), BN, ReLU."""
    return nn.Sequential(
        nn.Conv2d(inp, oup, 1, 1, 0, bias=False),
        nn.BatchNorm2d(oup),
        nn.ReLU(),
    )


class InvertedResidual(nn.Module):
    """1x1 expand - 3x3 depthwise - 1x1 linear projection; residual when stride 1 and widths agree."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ModelError(f"InvertedResidual stride must be 1 or 2, got {stride}")
        hidden = inp * expand_ratio
        self.stride = stride
        self.use_res_connect = stride == 1 and inp == oup
        self.conv = nn.Sequential(
            nn.Conv2d(inp, hidden, 1, 1, 0, bias=False),  # 0: pointwise expand
            nn.BatchNorm2d(hidden),
            nn.ReLU(),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),  # 3: depthwise
            nn.BatchNorm2d(hidden),
            nn.ReLU(),
            nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),  # 6: pointwise linear
            nn.BatchNorm2d(oup),  # 7
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    """RepDistiller's CIFAR MobileNetV2 with expansion ``expand_ratio`` (T) and ``width_mult`` (W)."""

    def __init__(
        self,
        expand_ratio: int = 6,
        width_mult: float = 0.5,
        num_classes: int = 10,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if isinstance(expand_ratio, bool) or not isinstance(expand_ratio, int) or expand_ratio < 1:
            raise ModelError(f"expand_ratio must be a positive integer, got {expand_ratio!r}")
        if isinstance(width_mult, bool) or not isinstance(width_mult, (int, float)) or width_mult <= 0:
            raise ModelError(f"width_mult must be a positive number, got {width_mult!r}")
        if int(16 * width_mult) < 1:
            raise ModelError(f"width_mult {width_mult} leaves a stage with no channels")
        self.expand_ratio = expand_ratio
        self.width_mult = width_mult

        input_channel = int(32 * width_mult)
        self.conv1 = conv_bn(in_channels, input_channel, 2)
        self.blocks = nn.ModuleList()
        for t, c, n, s in _SETTING:
            output_channel = int(c * width_mult)
            layers = []
            for stride in [s] + [1] * (n - 1):
                layers.append(
                    InvertedResidual(input_channel, output_channel, stride, expand_ratio if t is None else t)
                )
                input_channel = output_channel
            self.blocks.append(nn.Sequential(*layers))

        self.last_channel = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv2 = conv_1x1_bn(input_channel, self.last_channel)
        # RepDistiller: AvgPool2d(input_size // 16, ceil_mode=True), a global pool on 32x32 inputs.
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(self.last_channel, num_classes)
        self._register_load_state_dict_pre_hook(_accept_repdistiller_classifier_keys)

        # RepDistiller's init: conv N(0, 2 / (k*k*out_channels)) (= Kaiming normal, fan_out; also for the
        # depthwise convs, whose weight is out_channels x 1 x 3 x 3), BN 1 / 0, Linear N(0, 0.01) / 0.
        repdistiller_init_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        for stage in self.blocks:
            out = stage(out)
        out = self.conv2(out)
        out = torch.flatten(self.avgpool(out), 1)
        return self.classifier(out)


def _accept_repdistiller_classifier_keys(state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
    """Rename RepDistiller's ``classifier.0.*`` (its head is ``Sequential(Linear)``) to ``classifier.*``."""
    for suffix in ("weight", "bias"):
        old = f"{prefix}classifier.0.{suffix}"
        new = f"{prefix}classifier.{suffix}"
        if old in state_dict and new not in state_dict:
            state_dict[new] = state_dict.pop(old)


@register_model("mobilenetv2")
def mobilenetv2(
    num_classes: int = 10,
    in_channels: int = 3,
    image_size: int = 32,
    width_mult: float = 0.5,
    expand_ratio: int = 6,
) -> MobileNetV2:
    """RepDistiller mobile_half (``mobilenetv2_T_w(T=6, W=0.5)``); image_size is accepted but unused."""
    return MobileNetV2(expand_ratio, width_mult, num_classes=num_classes, in_channels=in_channels)
