"""Model zoo: registry, MLP/CNN for MNIST-scale work, RepDistiller CIFAR ResNets, torchvision/timm."""

from __future__ import annotations

# Importing the model modules registers their factories.
from kdkit.models import (  # noqa: F401
    cnn,
    efficientnet_lite,
    gpt,
    mlp,
    mobilenetv2,
    resnet_cifar,
    shallow_cnn,
    shufflenet,
    text,
    vgg,
    wrn,
)
from kdkit.models.cnn import CNN
from kdkit.models.gpt import GPT, KVCache
from kdkit.models.heads import backbone_parameters, get_classifier
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
    "GPT",
    "KVCache",
    "MLP",
    "GRUClassifier",
    "BiLSTMClassifier",
    "TextCNN",
    "BasicBlock",
    "ResNet",
    "apply_constraints",
    "backbone_parameters",
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
