"""The seed article's Flowers student: a shallow CNN (Keras layers, 'valid' padding)."""

from __future__ import annotations

from torch import Tensor, nn

from kdkit.models.registry import register_model


@register_model("shallow_cnn")
class ShallowCNN(nn.Module):
    """Conv 3x3 64 -> ReLU -> max-pool 4 -> conv 3x3 128 -> ReLU -> global average pool -> dense 512 -> ReLU
    -> dense (classes). 144,261 parameters for RGB input and 5 classes, at any image size."""

    def __init__(
        self, num_classes: int = 5, in_channels: int = 3, image_size: int = 224, hidden: int = 512
    ) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 64, 3),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(4),
            nn.Conv2d(64, 128, 3),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(128, hidden),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Linear(hidden, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Return the logits of a batch of images."""
        return self.classifier(self.features(x))
