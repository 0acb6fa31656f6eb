"""CIFAR-10/100 canonical python batches, read with a restricted unpickler (never plain ``pickle.load``)."""

from __future__ import annotations

import codecs
import io
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kdkit.data.imagefolder import iter_tar_files
from kdkit.errors import DataError

try:  # numpy >= 2 moved the implementation to numpy._core; numpy.core still resolves with a warning.
    from numpy._core.multiarray import _reconstruct
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct

# Everything a canonical batch (or a re-pickled copy of one) needs: numpy's array reconstruction and,
# for bytes written by Python 3 at protocol 2, codecs.encode. No other callable is reachable.
_SAFE_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,
}

ROW_BYTES = 3 * 32 * 32


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the numpy globals a CIFAR batch needs and refuses everything else."""

    def __init__(self, file: io.BufferedIOBase, source: str) -> None:
        # encoding="bytes": the canonical batches are Python 2 pickles whose str keys must stay bytes.
        super().__init__(file, encoding="bytes")
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        """Return an allowed global; raise DataError for any other ``module.name``."""
        try:
            return _SAFE_GLOBALS[(module, name)]
        except KeyError:
            raise DataError(
                f"refusing to unpickle {module}.{name} from {self.source}: a CIFAR batch holds only "
                "numpy arrays, lists and dicts"
            ) from None


def unpickle_batch(data: bytes, source: str) -> dict:
    """Unpickle one CIFAR batch file's bytes with ``RestrictedUnpickler``; the result must be a dict."""
    try:
        obj = RestrictedUnpickler(io.BytesIO(data), source).load()
    except DataError:
        raise
    except Exception as e:  # unpickling garbage raises many unrelated types (EOFError, ValueError, ...)
        raise DataError(
            f"{source}: not a valid CIFAR python batch ({type(e).__name__}: {e}); expected a pickled dict"
        ) from e
    if not isinstance(obj, dict):
        raise DataError(f"{source}: expected a pickled dict, found {type(obj).__name__}")
    return obj


def _field(batch: dict, key: str, source: str) -> Any:
    """Look up ``key`` as bytes (canonical Python 2 pickles) or str (re-pickled copies)."""
    for k in (key.encode(), key):
        if k in batch:
            return batch[k]
    found = ", ".join(repr(k) for k in list(batch)[:8])
    raise DataError(f"{source}: missing key {key!r} in CIFAR batch; found keys {found}")


def batch_arrays(batch: dict, label_key: str, num_classes: int, source: str) -> tuple[np.ndarray, np.ndarray]:
    """Validate one batch dict and return images (n, 3, 32, 32) uint8 and labels (n,) int64."""
    data = _field(batch, "data", source)
    if (
        not isinstance(data, np.ndarray)
        or data.dtype != np.uint8
        or data.ndim != 2
        or data.shape[1] != ROW_BYTES
    ):
        found = (
            f"{data.dtype} array of shape {data.shape}"
            if isinstance(data, np.ndarray)
            else type(data).__name__
        )
        raise DataError(f"{source}: 'data' must be a uint8 array of rows of {ROW_BYTES} bytes, found {found}")
    raw_labels = _field(batch, label_key, source)
    try:
        labels = np.asarray(raw_labels, dtype=np.int64)
    except (TypeError, ValueError) as e:
        raise DataError(f"{source}: {label_key!r} must be a list of integers ({e})") from e
    if labels.ndim != 1 or labels.shape[0] != data.shape[0]:
        raise DataError(
            f"{source}: expected {data.shape[0]} labels (one per row of 'data'), found {label_key!r} of shape {labels.shape}"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(
            f"{source}: labels must lie in [0, {num_classes - 1}], found range [{labels.min()}, {labels.max()}]"
        )
    # Canonical row layout: 1024 red, then 1024 green, then 1024 blue bytes, each row-major 32x32.
    return data.reshape(-1, 3, 32, 32), labels


def class_names(meta: dict | None, meta_key: str, default: Sequence[str], source: str) -> list[str]:
    """Class names from the batches' meta file if present, else the canonical list."""
    if meta is None:
        return list(default)
    names = [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in _field(meta, meta_key, source)]
    if len(names) != len(default):
        raise DataError(f"{source}: expected {len(default)} class names in {meta_key!r}, found {len(names)}")
    return names


def read_batches_dir(
    directory: Path, files: Sequence[str], meta_file: str
) -> tuple[dict[str, bytes], bytes | None]:
    """Read the named batch files (and the meta file, if present) from an extracted batches directory."""
    out = {}
    for f in files:
        try:
            out[f] = (directory / f).read_bytes()
        except OSError as e:
            raise DataError(f"{directory / f}: cannot read CIFAR batch ({e.strerror or e})") from e
    meta_path = directory / meta_file
    return out, meta_path.read_bytes() if meta_path.is_file() else None


def read_batches_archive(
    archive: Path, inner_dir: str, files: Sequence[str], meta_file: str
) -> tuple[dict[str, bytes], bytes | None]:
    """Read the named batch files (and meta) from ``<inner_dir>/`` inside a tar archive, without extracting."""
    wanted = {*files, meta_file}
    found: dict[str, bytes] = {}
    for parts, data in iter_tar_files(
        archive, lambda p: len(p) == 2 and p[0] == inner_dir and p[1] in wanted
    ):
        found[parts[1]] = data
    missing = [f for f in files if f not in found]
    if missing:
        raise DataError(
            f"{archive}: archive lacks {', '.join(f'{inner_dir}/{m}' for m in missing)}; "
            f"expected the canonical CIFAR python archive layout {inner_dir}/<batch files>"
        )
    return {f: found[f] for f in files}, found.get(meta_file)


def assemble(
    blobs: dict[str, bytes],
    meta_blob: bytes | None,
    *,
    label_key: str,
    meta_key: str,
    meta_name: str,
    default_classes: Sequence[str],
    location: str,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Unpickle and validate batch files, concatenating them in the given order."""
    num_classes = len(default_classes)
    images, labels = [], []
    for fname, blob in blobs.items():
        source = f"{location}/{fname}"
        x, y = batch_arrays(unpickle_batch(blob, source), label_key, num_classes, source)
        images.append(x)
        labels.append(y)
    meta_source = f"{location}/{meta_name}"
    meta = unpickle_batch(meta_blob, meta_source) if meta_blob is not None else None
    classes = class_names(meta, meta_key, default_classes, meta_source)
    return np.concatenate(images), np.concatenate(labels), classes
