"""Fully connected classifier with dropout and max-norm, as in Hinton et al.'s MNIST distillation."""

from __future__ import annotations

import difflib
from collections import OrderedDict
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.nn.utils import parametrize

from kdkit.errors import ModelError
from kdkit.models.registry import register_model

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "elu": nn.ELU,
    "leaky_relu": nn.LeakyReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
}


def make_activation(name: str) -> nn.Module:
    """Instantiate an activation by name, with a helpful error for typos."""
    key = str(name).lower()
    if key not in ACTIVATIONS:
        close = difflib.get_close_matches(key, list(ACTIVATIONS), n=1, cutoff=0.5)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ModelError(f"unknown activation {name!r}.{hint} Allowed: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[key]()


def _check_prob(arg: str, value: float) -> float:
    # p=1 would zero every unit; nn.Dropout accepts it, but it is never what a user meant.
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ModelError(f"{arg} must be a probability in [0, 1), got {value!r}")
    return float(value)


@torch.no_grad()
def renorm_rows_(weight: torch.Tensor, max_norm: float) -> None:
    """Scale in place every row of ``weight`` whose L2 norm exceeds ``max_norm`` down to ``max_norm``."""
    norms = weight.norm(p=2, dim=1, keepdim=True)
    # Rows at or below the bound get factor exactly 1.0, so they are left bit-for-bit unchanged.
    scale = torch.where(norms > max_norm, max_norm / norms.clamp_min(1e-12), torch.ones_like(norms))
    weight.mul_(scale)


@register_model("mlp")
class MLP(nn.Module):
    """Flatten -> [Linear -> activation -> dropout] * len(hidden) -> Linear classifier."""

    def __init__(
        self,
        in_features: int | None = None,
        hidden: int | Sequence[int] = (1200, 1200),
        num_classes: int = 10,
        dropout: float = 0.0,
        input_dropout: float = 0.0,
        max_norm: float | None = None,
        activation: str = "relu",
        in_channels: int = 3,
        image_size: int = 32,
    ) -> None:
        super().__init__()
        if in_features is None:
            in_features = in_channels * image_size * image_size
        if isinstance(in_features, bool) or not isinstance(in_features, int) or in_features < 1:
            raise ModelError(f"in_features must be a positive integer, got {in_features!r}")
        widths = [hidden] if isinstance(hidden, int) else list(hidden)
        if any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in widths):
            raise ModelError(f"hidden must be a positive integer or a list of them, got {hidden!r}")
        if max_norm is not None and (
            isinstance(max_norm, bool) or not isinstance(max_norm, (int, float)) or max_norm <= 0
        ):
            raise ModelError(f"max_norm must be a positive number or None, got {max_norm!r}")

        self.in_features = in_features
        self.max_norm = None if max_norm is None else float(max_norm)
        self.flatten = nn.Flatten()
        self.input_dropout = nn.Dropout(_check_prob("input_dropout", input_dropout))
        drop_p = _check_prob("dropout", dropout)
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        prev = in_features
        # Named layers ("features.fc1", "features.act2", ...) make readable hint/feature paths.
        for i, width in enumerate(widths, start=1):
            layers[f"fc{i}"] = nn.Linear(prev, width)
            layers[f"act{i}"] = make_activation(activation)
            layers[f"drop{i}"] = nn.Dropout(drop_p)
            prev = width
        self.features = nn.Sequential(layers)
        self.classifier = nn.Linear(prev, num_classes)

    def hidden_layers(self) -> list[nn.Linear]:
        """The Linear layers feeding hidden units (the ones max-norm constrains)."""
        return [m for m in self.features if isinstance(m, nn.Linear)]

    def constrain_(self) -> None:
        """Renormalize each hidden unit's incoming weight vector to L2 norm <= max_norm."""
        if self.max_norm is None:
            return  # called after every step: no grad-mode switch when there is nothing to do
        # Hinton et al. (2012) bound hidden units only; the output layer is left free.
        with torch.no_grad():
            for layer in self.hidden_layers():
                # A parametrized weight (e.g. int8 rounding in quantization-aware training) is computed on
                # each access: the bound applies to the trained tensor behind it.
                weight = (
                    layer.parametrizations.weight.original
                    if parametrize.is_parametrized(layer, "weight")
                    else layer.weight
                )
                renorm_rows_(weight, self.max_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.flatten(x)
        if x.shape[1] != self.in_features:
            # A bare matmul shape error would not say which setting is wrong.
            raise ModelError(
                f"MLP expects {self.in_features} input features per sample but got {x.shape[1]}; "
                f"set in_channels/image_size (or in_features) to match the data"
            )
        return self.classifier(self.features(self.input_dropout(x)))
