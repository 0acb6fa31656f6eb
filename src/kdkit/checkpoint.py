"""Checkpoints as safetensors (tensors) plus JSON (everything else), written atomically.

Nothing here unpickles anything: a checkpoint handed over by someone else cannot run code.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from kdkit import faults
from kdkit.errors import CheckpointError
from kdkit.file_modes import new_file_mode, temp_file_beside

FORMAT = "kdkit-checkpoint"
FORMAT_VERSION = 1


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write bytes to path via a temp file in the same directory, fsync and rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_file_beside(path, ".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write UTF-8 text to path atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Write tensors to a safetensors file atomically (temp file, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_file_beside(path, ".tmp")
    os.close(fd)
    try:
        # safetensors refuses shared or non-contiguous storage: give it plain contiguous copies. On the CPU
        # `.contiguous().cpu()` copies nothing, so a tensor whose storage an earlier one holds (tied input and
        # output embeddings of a language model) is cloned; loading copies the same values into both names.
        clean: dict[str, torch.Tensor] = {}
        storages: set[int] = set()
        for k, v in tensors.items():
            t = v.detach().contiguous().cpu()
            ptr = t.untyped_storage().data_ptr()
            if ptr in storages:
                t = t.clone()
            storages.add(t.untyped_storage().data_ptr())
            clean[k] = t
        save_file(clean, tmp, metadata=metadata)
        os.chmod(tmp, new_file_mode())  # save_file writes a new file at tmp: the mode set at creation is gone
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        faults.hit("checkpoint-write")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def save_checkpoint(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    """Write `<path>.safetensors` and `<path>.json` atomically; return the safetensors path.

    The JSON is written last: a checkpoint whose JSON exists is complete.
    """
    base = Path(path)
    if base.suffix in (".safetensors", ".json"):
        base = base.with_suffix("")
    st = base.with_suffix(".safetensors")
    atomic_save_tensors(st, tensors, {"format": FORMAT})
    doc = {"format": FORMAT, "format_version": FORMAT_VERSION, "tensors": st.name, **meta}
    atomic_write_text(base.with_suffix(".json"), json.dumps(doc, indent=2, sort_keys=True))
    return st


def _checkpoint_files(path: str | Path) -> tuple[Path, Path]:
    """Return (safetensors, json) of a kdkit checkpoint given either file or the base path; both must exist."""
    given = Path(path)
    if given.suffix not in ("", ".safetensors", ".json"):
        raise CheckpointError(
            f"{str(path)!r} is not a kdkit checkpoint: kdkit reads only safetensors + JSON pairs "
            "(name.safetensors and name.json) and never unpickles files"
        )
    base = given.with_suffix("") if given.suffix else given
    st, js = base.with_suffix(".safetensors"), base.with_suffix(".json")
    if not js.is_file() and not st.is_file():
        # Neither file: name the path as the user gave it, not a .json they never wrote.
        raise CheckpointError(
            f"checkpoint {str(path)!r} does not exist: both files of the kdkit checkpoint pair, "
            f"{base.name}.safetensors and {base.name}.json, are missing from {str(base.parent)!r}"
        )
    if not js.is_file():
        raise CheckpointError(f"checkpoint metadata {str(js)!r} is missing (expected beside {str(st)!r})")
    if not st.is_file():
        raise CheckpointError(f"checkpoint tensors {str(st)!r} are missing (expected beside {str(js)!r})")
    return st, js


def _read_meta(js: Path) -> dict[str, Any]:
    try:
        meta = json.loads(js.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"checkpoint metadata {str(js)!r} is not valid JSON: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f'{str(js)!r} is not kdkit checkpoint metadata (no "format": "{FORMAT}")')
    return meta


def read_checkpoint_meta(path: str | Path) -> dict[str, Any]:
    """Return the metadata of a kdkit checkpoint (both files must exist; the tensors are not read)."""
    return _read_meta(_checkpoint_files(path)[1])


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Return (tensors, meta) of a kdkit checkpoint given its .safetensors, .json or base path."""
    st, js = _checkpoint_files(path)
    meta = _read_meta(js)
    try:
        tensors = load_file(str(st))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint tensors {str(st)!r} are unreadable or truncated: {exc}") from None
    return tensors, meta


def prefixed(prefix: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Return the state dict with every key prefixed, e.g. 'model.' for a model's weights."""
    return {f"{prefix}{k}": v for k, v in state.items()}


def unprefixed(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Return the entries whose key starts with prefix, prefix removed."""
    n = len(prefix)
    return {k[n:]: v for k, v in tensors.items() if k.startswith(prefix)}


def file_sha256(path: str | Path) -> str:
    """Return the hex SHA-256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
