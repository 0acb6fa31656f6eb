"""Taps: read intermediate outputs of any nn.Module by module path with forward hooks.

A tap never rewrites a model's `forward`, so kdkit's zoo, torchvision, timm and a user's own models are all
distillable as they are. Removing the tap leaves the model exactly as it was.

A path ending in ":input" reads what the module receives instead of what it returns (a forward pre-hook):
"layer3.2.relu_out:input" is the pre-activation of a CIFAR ResNet block, which activation-boundary
distillation and RepDistiller's `preact` features need.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from kdkit.errors import ModelError


def _walk(model: nn.Module, path: str) -> nn.Module | None:
    """Return the submodule at `path`, where a negative index counts from the end of a Sequential/ModuleList."""
    module = model
    for part in path.split("."):
        children = module._modules
        if part in children and children[part] is not None:
            module = children[part]
        elif (
            part.startswith("-") and part[1:].isdigit() and isinstance(module, (nn.Sequential, nn.ModuleList))
        ):
            if int(part) < -len(module):
                return None
            module = module[int(part)]
        else:
            return None
    return module


def resolve_module(model: nn.Module, path: str, what: str = "model") -> nn.Module:
    """Return the submodule at `path`, or raise ModelError listing the nearest valid paths.

    "layer3.-1" is the last block of layer3 (negative indices count from the end of a Sequential or
    ModuleList), so one path fits networks of any depth.
    """
    names = [n for n, _ in model.named_modules() if n]
    found = _walk(model, path) if path else model
    root = getattr(model, "tap_root", None)  # a wrapper (Hugging Face models) whose paths read from inside
    if found is None and isinstance(root, str) and isinstance(inner := getattr(model, root, None), nn.Module):
        found = _walk(inner, path)
        names = [n for n, _ in inner.named_modules() if n] + names
    if found is None:
        close = difflib.get_close_matches(path, names, n=5, cutoff=0.4)
        hint = f"; nearest: {close}" if close else ""
        shown = names if len(names) <= 30 else names[:30] + ["..."]
        raise ModelError(
            f"{what} ({type(model).__name__}) has no module {path!r}{hint}; valid paths include {shown}"
        )
    return found


def _first_tensor(out: Any, verb: str = "returned") -> Tensor:
    if isinstance(out, Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], Tensor):
        return out[0]
    if isinstance(out, dict):
        for v in out.values():
            if isinstance(v, Tensor):
                return v
    raise ModelError(f"tapped module {verb} {type(out).__name__}, not a tensor")


INPUT_SUFFIX = ":input"


def module_path(path: str) -> str:
    """Return the module part of a tap path (without a trailing ":input")."""
    return path.removesuffix(INPUT_SUFFIX)


class Tap:
    """Record the outputs of named submodules on every forward pass; use as a context manager or `remove()`."""

    def __init__(self, model: nn.Module, paths: Iterable[str], what: str = "model") -> None:
        self.paths = list(dict.fromkeys(paths))
        self.outputs: dict[str, Tensor] = {}
        self._handles: list[RemovableHandle] = []
        # Validate all before hooking any.
        modules = {p: resolve_module(model, module_path(p), what) for p in self.paths}
        for path, module in modules.items():
            if path.endswith(INPUT_SUFFIX):
                self._handles.append(module.register_forward_pre_hook(self._input_hook(path)))
            else:
                self._handles.append(module.register_forward_hook(self._hook(path)))

    def _hook(self, path: str):
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            self.outputs[path] = _first_tensor(output)

        return hook

    def _input_hook(self, path: str):
        def hook(module: nn.Module, args: Any) -> None:
            x = _first_tensor(args, "received")
            # An in-place module (nn.ReLU(inplace=True)) would overwrite the tensor it received: keep a copy.
            self.outputs[path] = x.clone() if getattr(module, "inplace", False) else x

        return hook

    def remove(self) -> None:
        """Detach every hook; the model is left as it was."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self.outputs.clear()

    def __enter__(self) -> Tap:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()
