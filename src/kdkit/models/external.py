"""Models from torchvision / timm, imported lazily so neither is a hard dependency."""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

import torch
from torch import nn

from kdkit.errors import ModelError
from kdkit.models.heads import get_classifier

# kdkit never downloads weights: runs must be reproducible offline and teachers are trained by kdkit.
_WEIGHT_ARGS = ("pretrained", "weights", "pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path")


def _import(library: str) -> ModuleType:
    try:
        return importlib.import_module(library)
    except ImportError as exc:
        raise ModelError(
            f"model '{library}:...' needs the {library} package, which is not installed; "
            f"install it with `pip install kdkit[vision]`"
        ) from exc
    except Exception as exc:  # a wheel built for another torch typically fails here with OSError/RuntimeError
        raise ModelError(
            f"{library} is installed but failed to import ({type(exc).__name__}: {exc}); it is probably "
            f"built for a different torch (installed: {torch.__version__}). Reinstall a matching version."
        ) from exc


def _attach_classifier(model: nn.Module) -> nn.Module:
    """Expose the head as ``model.classifier`` like kdkit's own models, when that cannot break the model."""
    if isinstance(getattr(model, "classifier", None), nn.Linear):
        return model
    if hasattr(model, "classifier"):
        # e.g. torchvision VGG: `classifier` is a Sequential its forward() calls; shadowing it would
        # break the model, so callers use kdkit.models.get_classifier() there.
        return model
    try:
        head = get_classifier(model)
    except ModelError:
        return model
    # object.__setattr__ stores a plain attribute: the head stays registered once (under its own
    # name), so state_dict keys and parameter counts are unchanged.
    object.__setattr__(model, "classifier", head)
    return model


def _create_timm(name: str, num_classes: int, in_channels: int, kwargs: dict[str, Any]) -> nn.Module:
    timm = _import("timm")
    try:
        return timm.create_model(
            name, pretrained=False, num_classes=num_classes, in_chans=in_channels, **kwargs
        )
    except TypeError as exc:
        raise ModelError(f"bad option for timm model {name!r}: {exc}") from exc
    except (RuntimeError, ValueError, KeyError) as exc:  # timm: RuntimeError("Unknown model (...)")
        raise ModelError(
            f"timm could not create {name!r}: {exc}. See timm.list_models() for available names."
        ) from exc


def _create_torchvision(name: str, num_classes: int, in_channels: int, kwargs: dict[str, Any]) -> nn.Module:
    if in_channels != 3:
        # torchvision builders hard-code 3 input channels; silently feeding 1-channel data would crash later.
        raise ModelError(
            f"torchvision models take 3 input channels, got in_channels={in_channels}; "
            f"convert the data to RGB or use a 'timm:' model (timm supports in_chans)"
        )
    tv = _import("torchvision")
    models = tv.models
    try:
        if hasattr(models, "get_model"):  # torchvision >= 0.14
            return models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
        builder = getattr(models, name, None)
        if not callable(builder):
            raise ValueError(f"unknown model {name!r}")
        return builder(pretrained=False, num_classes=num_classes, **kwargs)
    except TypeError as exc:
        raise ModelError(f"bad option for torchvision model {name!r}: {exc}") from exc
    except (RuntimeError, ValueError, KeyError) as exc:
        raise ModelError(
            f"torchvision could not create {name!r}: {exc}. See torchvision.models.list_models()."
        ) from exc


def create_external(
    library: str, name: str, num_classes: int, in_channels: int, image_size: int, **kwargs: Any
) -> nn.Module:
    """Create ``name`` from ``library`` ("torchvision" or "timm") with random init and ``num_classes`` outputs."""
    if not name:
        raise ModelError(f"missing model name after '{library}:' (e.g. '{library}:resnet18')")
    weight_args = [k for k in kwargs if k in _WEIGHT_ARGS]
    if weight_args:
        raise ModelError(
            f"option(s) {', '.join(weight_args)} are not supported for '{library}:{name}': kdkit never "
            f"downloads pretrained weights; load a checkpoint instead"
        )
    # image_size is not passed: neither library needs it for the classifier models kdkit uses.
    if library == "timm":
        model = _create_timm(name, num_classes, in_channels, kwargs)
    elif library == "torchvision":
        model = _create_torchvision(name, num_classes, in_channels, kwargs)
    else:
        raise ModelError(f"unknown model library {library!r}; use 'torchvision' or 'timm'")
    return _attach_classifier(model)
