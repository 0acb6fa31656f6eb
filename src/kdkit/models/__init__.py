"""Model zoo: registry, MLP/CNN for MNIST-scale work, RepDistiller CIFAR ResNets, torchvision/timm."""

from __future__ import annotations

# Importing the model modules registers their factories.
from kdkit.models import cnn, mlp, mobilenetv2, resnet_cifar, shufflenet, text, vgg, wrn  # noqa: F401
from kdkit.models.cnn import CNN
from kdkit.models.heads import get_classifier
from kdkit.models.mlp import MLP
from kdkit.models.registry import (
    apply_constraints,
    constraints,
    count_params,
    create,
    list_models,
    model_size_mb,
    register_model,
)
from kdkit.models.resnet_cifar import (
    BasicBlock,
    ResNet,
    resnet8,
    resnet8x4,
    resnet14,
    resnet20,
    resnet32,
    resnet32x4,
    resnet44,
    resnet56,
    resnet110,
)
from kdkit.models.sequence import GRUClassifier
from kdkit.models.text import BiLSTMClassifier, TextCNN

__all__ = [
    "CNN",
    "MLP",
    "GRUClassifier",
    "BiLSTMClassifier",
    "TextCNN",
    "BasicBlock",
    "ResNet",
    "apply_constraints",
    "constraints",
    "count_params",
    "create",
    "get_classifier",
    "list_models",
    "model_size_mb",
    "register_model",
    "resnet8",
    "resnet8x4",
    "resnet14",
    "resnet20",
    "resnet32",
    "resnet32x4",
    "resnet44",
    "resnet56",
    "resnet110",
]
