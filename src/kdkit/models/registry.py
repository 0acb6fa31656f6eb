"""Model registry: name -> factory, plus size/parameter helpers and the constraint hook."""

from __future__ import annotations

import difflib
import inspect
import re
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import nn

from kdkit.errors import ModelError
from kdkit.models.external import create_external  # imports torchvision/timm only when asked for
from kdkit.models.hf import PREFIX as HF_PREFIX
from kdkit.models.hf import create_hf, create_hf_causal_lm  # import transformers only when asked for
from kdkit.models.module_path import create_from_module_path, is_module_path

F = TypeVar("F", bound=Callable[..., nn.Module])

# Every factory receives these three, so configs can describe any model the same way.
COMMON_ARGS: tuple[str, ...] = ("num_classes", "in_channels", "image_size")
# "<prefix>:<name>" is delegated to an external library (see external.py); "hf:<path>" to hf.py.
EXTERNAL_PREFIXES: tuple[str, ...] = ("torchvision", "timm", HF_PREFIX)

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def _natural_key(name: str) -> list[Any]:
    """Sort "resnet8" before "resnet14" (plain string order would not)."""
    return [int(tok) if tok.isdigit() else tok for tok in re.split(r"(\d+)", name)]


def _accepts_var_kwargs(sig: inspect.Signature) -> bool:
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values())


def _option_names(sig: inspect.Signature) -> list[str]:
    """Keyword-passable parameters of a factory, i.e. what a user may put in a config."""
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [n for n, p in sig.parameters.items() if p.kind in kinds]


def register_model(name: str | Callable[..., nn.Module] | None = None) -> Callable[[F], F]:
    """Decorator registering a model factory (function or nn.Module class) under ``name``."""
    # Allow bare ``@register_model`` as well as ``@register_model("name")``.
    if callable(name):
        return register_model(None)(name)  # type: ignore[return-value]

    def decorator(factory: F) -> F:
        key = (name or factory.__name__).lower()
        if not key or ":" in key:
            # ":" is reserved for "torchvision:<name>" / "timm:<name>".
            raise ModelError(f"invalid model name {key!r}: names must be non-empty and must not contain ':'")
        try:
            sig = inspect.signature(factory)
        except (TypeError, ValueError) as exc:
            raise ModelError(f"cannot register {key!r}: its signature cannot be inspected ({exc})") from exc
        if not _accepts_var_kwargs(sig):
            missing = [a for a in COMMON_ARGS if a not in _option_names(sig)]
            if missing:
                raise ModelError(
                    f"cannot register {key!r}: factory must accept {', '.join(COMMON_ARGS)} "
                    f"(may ignore them); missing {', '.join(missing)}"
                )
        existing = _REGISTRY.get(key)
        # Re-registering the same definition (module reload) is harmless; a different one is a clash.
        if existing is not None and (existing.__module__, existing.__qualname__) != (
            factory.__module__,
            factory.__qualname__,
        ):
            raise ModelError(
                f"model name {key!r} is already registered by {existing.__module__}.{existing.__qualname__}"
            )
        _REGISTRY[key] = factory
        return factory

    return decorator


def list_models() -> list[str]:
    """Names accepted by ``create`` (besides "torchvision:<name>" and "timm:<name>")."""
    return sorted(_REGISTRY, key=_natural_key)


def _check_positive_int(arg: str, value: Any) -> None:
    # bool is an int subclass; True classes is a config mistake, not 1 class.
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ModelError(f"{arg} must be a positive integer, got {value!r}")


def _unknown_model_error(name: str) -> ModelError:
    close = difflib.get_close_matches(name.lower(), list(_REGISTRY), n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return ModelError(
        f"unknown model {name!r}.{hint} Available: {', '.join(list_models())} "
        f"(see kdkit.models.list_models()), or 'torchvision:<name>' / 'timm:<name>' "
        f"with kdkit[vision] installed."
    )


def create(
    name: str,
    num_classes: int = 10,
    in_channels: int = 3,
    image_size: int = 32,
    *,
    causal_lm: bool = False,
    **kwargs: Any,
) -> nn.Module:
    """Build the model registered as ``name`` (or "torchvision:<name>" / "timm:<name>" / "pkg.mod:Factory").

    `causal_lm`: the data is language-model text, so "hf:PATH" is the folder's causal language model over
    `num_classes` tokens (else a sequence classifier with a new head).
    """
    if not isinstance(name, str) or not name.strip():
        raise ModelError(f"model name must be a non-empty string, got {name!r}")
    for arg, value in zip(COMMON_ARGS, (num_classes, in_channels, image_size), strict=True):
        _check_positive_int(arg, value)
    name = name.strip()

    if ":" in name:
        prefix, _, ext_name = name.partition(":")
        if prefix.lower() == HF_PREFIX and causal_lm:
            return create_hf_causal_lm(ext_name, num_classes, **kwargs)
        if prefix.lower() == HF_PREFIX:
            return create_hf(ext_name, num_classes, **kwargs)  # a local Hugging Face folder or package
        if prefix.lower() in EXTERNAL_PREFIXES:
            return create_external(prefix.lower(), ext_name, num_classes, in_channels, image_size, **kwargs)
        if is_module_path(name):
            return create_from_module_path(name, num_classes, in_channels, image_size, **kwargs)
        raise ModelError(
            f"unknown model source {prefix!r} in {name!r}; use one of "
            f"{', '.join(p + ':<name>' for p in EXTERNAL_PREFIXES)}, 'package.module:Factory' (your own "
            f"model) or a name from kdkit.models.list_models()"
        )

    factory = _REGISTRY.get(name.lower())
    if factory is None:
        raise _unknown_model_error(name)

    sig = inspect.signature(factory)
    if not _accepts_var_kwargs(sig):
        accepted = [n for n in _option_names(sig) if n not in COMMON_ARGS]
        for key in kwargs:
            if key not in accepted:
                close = difflib.get_close_matches(key, accepted, n=1, cutoff=0.6)
                hint = f" Did you mean {close[0]!r}?" if close else ""
                allowed = ", ".join(sorted(accepted)) or "none"
                raise ModelError(
                    f"model {name!r} has no option {key!r}.{hint} Accepted options: {allowed} "
                    f"({', '.join(COMMON_ARGS)} are not options: kdkit sets them from the data set)."
                )
    return factory(num_classes=num_classes, in_channels=in_channels, image_size=image_size, **kwargs)


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (shared ones counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def model_size_mb(model: nn.Module) -> float:
    """Bytes of parameters plus buffers as stored, in MiB."""
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors) / 2**20


@torch.no_grad()
def constraints(model: nn.Module) -> list[Callable[[], Any]]:
    """Return the ``constrain_()`` methods of every submodule defining one, in module order.

    The training loop looks them up once and calls them after each optimizer step.
    """
    found = (getattr(module, "constrain_", None) for module in model.modules())
    return [c for c in found if callable(c)]


def apply_constraints(model: nn.Module) -> None:
    """Call ``constrain_()`` on every submodule defining it (run after each optimizer step)."""
    for constrain in constraints(model):
        constrain()
