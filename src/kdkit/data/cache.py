"""On-disk cache of decoded datasets as .npz files (no pickle), written atomically."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import stat
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from kdkit.file_modes import temp_file_beside

CACHE_DIRNAME = ".kdkit-cache"


class DataCacheWarning(UserWarning):
    """The dataset cache could not be read or written; loading continues without it."""


def user_cache_dir() -> Path:
    """Return the per-user cache for decoded data: $XDG_CACHE_HOME/kdkit/decoded or ~/.cache/kdkit/decoded."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "kdkit" / "decoded"


def cache_dir(root: Path) -> Path:
    """Cache directory: ``$KDKIT_CACHE`` if set, else ``<root>/.kdkit-cache``, else a per-user cache.

    A read-only data directory (a shared copy, a mounted volume) still gets a cache: the user's own.
    """
    env = os.environ.get("KDKIT_CACHE")
    if env:
        return Path(env).expanduser()
    local = Path(root) / CACHE_DIRNAME
    if local.is_dir() or _writable_dir_no_create(Path(root)):
        return local
    return user_cache_dir()


def _writable_dir_no_create(directory: Path) -> bool:
    with contextlib.suppress(OSError):
        if not directory.is_dir() or not directory.stat().st_mode & (
            stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH
        ):
            return False
        return os.access(directory, os.W_OK)
    return False


def file_signature(paths: Iterable[Path]) -> list[list]:
    """``[absolute path, size, mtime_ns]`` per file: any change to a source invalidates the cache entry."""
    sig = []
    for p in paths:
        st = Path(p).stat()
        sig.append([str(Path(p).resolve()), st.st_size, st.st_mtime_ns])
    return sig


def tree_signature(root: Path, files: Iterable[Path]) -> list:
    """One digest over every file's relative path, size and mtime_ns for a directory source."""
    h = hashlib.sha256()
    for p in sorted(files):
        st = p.stat()
        h.update(f"{p.relative_to(root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return [str(Path(root).resolve()), h.hexdigest()]


def cache_file(directory: Path, label: str, **key_fields: object) -> Path:
    """Cache file path for a dataset: readable label plus a hash of everything the content depends on."""
    key = hashlib.sha256(json.dumps(key_fields, sort_keys=True, default=str).encode()).hexdigest()[:24]
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("_") or "data"
    return Path(directory) / f"{safe}-{key}.npz"


Arrays = tuple[np.ndarray, np.ndarray, list[str]]


def load_cached(path: Path) -> Arrays | None:
    """Return cached (images, labels, classes), or None if absent; a corrupt file is reported and ignored."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            images, labels, classes = z["images"], z["labels"], [str(c) for c in z["classes"]]
        if (
            images.dtype != np.uint8
            or images.ndim != 4
            or labels.dtype != np.int64
            or labels.shape != images.shape[:1]
        ):
            raise ValueError(
                f"unexpected arrays: images {images.dtype}{images.shape}, labels {labels.dtype}{labels.shape}"
            )
    except Exception as e:  # any failure (truncated zip, bad header, wrong dtype) just means "rebuild"
        warnings.warn(
            f"ignoring corrupt dataset cache file {path} ({type(e).__name__}: {e}); rebuilding it",
            DataCacheWarning,
            stacklevel=3,
        )
        return None
    return images, labels, classes


def _writable_dir(directory: Path) -> bool:
    """Create ``directory`` if needed and report whether files may be written in it."""
    parent = directory if directory.exists() else directory.parent
    # root bypasses permission bits; still honour a directory made read-only for everyone (shared data).
    with contextlib.suppress(OSError):
        if parent.is_dir() and not parent.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH):
            return False
    directory.mkdir(parents=True, exist_ok=True)
    return os.access(directory, os.W_OK)


def save_cached(path: Path, images: np.ndarray, labels: np.ndarray, classes: list[str]) -> bool:
    """Write the arrays to ``path`` atomically (temp file, fsync, rename); on failure warn and return False."""
    directory = path.parent
    tmp: str | None = None
    try:
        if not _writable_dir(directory):
            raise PermissionError(f"directory {directory} is not writable")
        fd, tmp = temp_file_beside(path, ".tmp")  # readable by other users, as a shared cache must be
        with os.fdopen(fd, "wb") as f:
            np.savez(
                f,
                images=images,
                labels=labels,
                classes=np.array(classes, dtype=str),
            )
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        return True
    except OSError as e:
        warnings.warn(
            f"cannot write dataset cache {path} ({e}); continuing without caching. "
            "Set KDKIT_CACHE to a writable directory to enable it.",
            DataCacheWarning,
            stacklevel=3,
        )
        return False
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
