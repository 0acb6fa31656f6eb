"""Models named by a Python path, ``"package.module:Factory"``: the user's own models, no registration.

The factory (an ``nn.Module`` class or a function returning one) is imported when the model is built. kdkit
passes the data set's ``num_classes``, ``in_channels`` and ``image_size`` to those of them the factory
accepts, and every other config key as a keyword option, checked against the factory's signature.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from typing import Any

from torch import nn

from kdkit.errors import ModelError

COMMON_ARGS: tuple[str, ...] = ("num_classes", "in_channels", "image_size")


def is_module_path(name: str) -> bool:
    """Return True for ``"a.b:Attr"`` / ``"a:Attr"`` names (a Python module, a colon, an attribute)."""
    module, sep, attr = name.partition(":")
    parts = module.split(".")
    return (
        bool(sep and attr) and all(p.isidentifier() for p in parts) and attr.replace(".", "").isidentifier()
    )


def load_factory(name: str) -> Any:
    """Import ``module:attr`` (attr may be dotted) and return it; a clear ModelError when it cannot."""
    module_name, _, attr = name.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ModelError(
            f"model {name!r}: cannot import module {module_name!r} ({exc}). A model path is "
            f"'package.module:Factory' with the package importable (installed, or on PYTHONPATH); "
            f"kdkit's own sources are 'torchvision:<name>' and 'timm:<name>'."
        ) from exc
    for part in attr.split("."):
        if not hasattr(obj, part):
            found = [a for a in dir(obj) if not a.startswith("_")]
            close = difflib.get_close_matches(part, found, n=1, cutoff=0.6)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ModelError(f"model {name!r}: {module_name!r} has no attribute {attr!r}.{hint}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ModelError(f"model {name!r}: {attr!r} is a {type(obj).__name__}, not a class or function")
    return obj


def _signature(factory: Any, name: str) -> inspect.Signature:
    try:
        return inspect.signature(factory)
    except (TypeError, ValueError) as exc:
        raise ModelError(f"model {name!r}: its signature cannot be inspected ({exc})") from exc


def create_from_module_path(
    name: str, num_classes: int, in_channels: int, image_size: int, **options: Any
) -> nn.Module:
    """Build ``module:Factory`` with the common arguments it accepts and the config's options."""
    factory = load_factory(name)
    params = _signature(factory, name).parameters
    var_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    keyword = [
        n
        for n, p in params.items()
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    ]
    common = dict(zip(COMMON_ARGS, (num_classes, in_channels, image_size), strict=True))
    for key in options:
        if key in COMMON_ARGS:
            raise ModelError(
                f"model {name!r}: {key!r} is not an option: kdkit sets {', '.join(COMMON_ARGS)} from the data set"
            )
        if not var_kwargs and key not in keyword:
            close = difflib.get_close_matches(key, keyword, n=1, cutoff=0.6)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            accepted = ", ".join(k for k in keyword if k not in COMMON_ARGS) or "none"
            raise ModelError(f"model {name!r} has no option {key!r}.{hint} Accepted options: {accepted}")
    passed = {k: v for k, v in common.items() if var_kwargs or k in keyword}
    if "num_classes" not in passed:
        raise ModelError(
            f"model {name!r} must accept a `num_classes` keyword argument: kdkit sizes the classifier "
            f"from the data set"
        )
    try:
        model = factory(**passed, **options)
    except TypeError as exc:
        raise ModelError(
            f"model {name!r} could not be built with {sorted({**passed, **options})}: {exc}"
        ) from exc
    if not isinstance(model, nn.Module):
        raise ModelError(f"model {name!r} returned a {type(model).__name__}, not a torch.nn.Module")
    return model
