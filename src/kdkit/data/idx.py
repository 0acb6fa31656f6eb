"""IDX files (the MNIST format): parse, read gzip or raw, write; MNIST splits on disk and embedded."""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import struct
import zlib
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from kdkit.errors import DataError

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

MNIST_SPLIT_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}

# MD5 of the files in kdkit/data/embedded/mnist-small/, as written by scripts/make_embedded_mnist.py.
EMBEDDED_MNIST_SMALL_MD5: dict[str, str] = {
    "train-images-idx3-ubyte.gz": "dcda720e90cc99b157dd6af2ea8269e3",
    "train-labels-idx1-ubyte.gz": "72b42779369b55b019e83dde2986ff44",
    "t10k-images-idx3-ubyte.gz": "a71946879fa27c6064180b223c1b3c4c",
    "t10k-labels-idx1-ubyte.gz": "94ce34b44b059b55a9c047a67c299c59",
}
EMBEDDED_MNIST_SMALL_SIZES = {"train": 10_000, "test": 2_000}

GZIP_MAGIC = b"\x1f\x8b"

# IDX type codes; the format stores multi-byte values big-endian.
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def gunzip_if_needed(raw: bytes, source: str) -> bytes:
    """Return ``raw`` decompressed if it starts with the gzip magic number, else unchanged."""
    # Detect by content, not by file name: a decompressed file keeping its ".gz" name must still load.
    if raw[:2] != GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise DataError(
            f"{source}: corrupt or truncated gzip data ({e}); expected a complete gzip stream, "
            f"found {len(raw)} bytes of gzip data. Delete the file and fetch it again."
        ) from e


def parse_idx(data: bytes, source: str) -> np.ndarray:
    """Parse an uncompressed IDX payload into a native-endian, writable numpy array."""
    if len(data) < 4:
        raise DataError(f"{source}: file has {len(data)} bytes, expected at least a 4-byte IDX header")
    if data[0] != 0 or data[1] != 0:
        raise DataError(
            f"{source}: bad IDX magic number 0x{data[:4].hex()}, expected 0x0000TTDD "
            "(two zero bytes, type code, number of dimensions); not an IDX file"
        )
    code, ndim = data[2], data[3]
    if code not in IDX_DTYPES:
        valid = ", ".join(f"0x{c:02X}" for c in IDX_DTYPES)
        raise DataError(f"{source}: unknown IDX type code 0x{code:02X}, expected one of {valid}")
    if ndim == 0:
        raise DataError(f"{source}: IDX header declares 0 dimensions, expected at least 1")
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise DataError(
            f"{source}: truncated IDX header: {ndim} dimensions need {header_len} header bytes, found {len(data)}"
        )
    dims = struct.unpack(f">{ndim}I", data[4:header_len])
    dtype = IDX_DTYPES[code]
    count = math.prod(dims)
    expected = count * dtype.itemsize
    found = len(data) - header_len
    if found != expected:
        what = "truncated" if found < expected else "has trailing bytes"
        raise DataError(
            f"{source}: IDX file {what}: header says shape {tuple(dims)} of {dtype.name} = "
            f"{expected} payload bytes expected, {found} found"
        )
    arr = np.frombuffer(data, dtype=dtype, count=count, offset=header_len).reshape(dims)
    # astype copies: the result owns writable memory (torch.from_numpy warns on read-only buffers)
    # and is native-endian.
    return arr.astype(dtype.newbyteorder("="))


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file, gzip-compressed or raw, into a numpy array."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read IDX file ({e.strerror or e})") from e
    return parse_idx(gunzip_if_needed(raw, str(path)), str(path))


def idx_bytes(array: np.ndarray) -> bytes:
    """Serialise an array to uncompressed IDX bytes."""
    array = np.asarray(array)
    codes = {dt.newbyteorder("="): c for c, dt in IDX_DTYPES.items()}
    native = array.dtype.newbyteorder("=")
    if native not in codes:
        raise DataError(f"cannot write dtype {array.dtype} as IDX; supported: u1, i1, i2, i4, f4, f8")
    if array.ndim == 0 or array.ndim > 255:
        raise DataError(f"cannot write a {array.ndim}-dimensional array as IDX (1 to 255 dimensions)")
    code = codes[native]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, dtype=IDX_DTYPES[code]).tobytes()


def write_idx(path: str | os.PathLike, array: np.ndarray, compress: bool | None = None) -> Path:
    """Write ``array`` as an IDX file, gzip-compressed (reproducibly, mtime 0) if ``compress`` or the name ends in .gz."""
    path = Path(path)
    data = idx_bytes(array)
    if compress is None:
        compress = path.suffix == ".gz"
    if compress:
        # mtime=0 and no file name in the header: the same array always gives the same bytes (stable MD5s).
        data = gzip.compress(data, compresslevel=9, mtime=0)
    path.write_bytes(data)
    return path


def mnist_arrays(
    images: np.ndarray, labels: np.ndarray, images_src: str, labels_src: str
) -> tuple[np.ndarray, np.ndarray]:
    """Validate IDX arrays as MNIST and return images (N, 1, 28, 28) uint8 and labels (N,) int64."""
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DataError(
            f"{images_src}: expected MNIST images as uint8 of shape (N, 28, 28), "
            f"found {images.dtype} of shape {images.shape}"
        )
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise DataError(
            f"{labels_src}: expected MNIST labels as uint8 of shape (N,), found {labels.dtype} of shape {labels.shape}"
        )
    if labels.shape[0] != images.shape[0]:
        raise DataError(
            f"{labels_src}: expected {images.shape[0]} labels to match {images_src}, found {labels.shape[0]}"
        )
    if labels.size and labels.max() > 9:
        raise DataError(f"{labels_src}: expected labels 0-9, found {int(labels.max())}")
    return images.reshape(-1, 1, 28, 28), labels.astype(np.int64)


def load_mnist_files(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read an MNIST split from its two IDX files (gzip or raw)."""
    return mnist_arrays(read_idx(images_path), read_idx(labels_path), str(images_path), str(labels_path))


def embedded_dir() -> Traversable:
    """The package directory holding the embedded mnist-small files (works from wheels and zips too)."""
    return resources.files("kdkit.data").joinpath("embedded").joinpath("mnist-small")


def load_embedded_mnist_small(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Load a split of the embedded MNIST subset, verifying each file's MD5 first."""
    base = embedded_dir()
    arrays = []
    for fname in MNIST_SPLIT_FILES[split]:
        src = f"kdkit/data/embedded/mnist-small/{fname}"
        try:
            raw = base.joinpath(fname).read_bytes()
        except OSError as e:
            raise DataError(
                f"{src}: embedded data file missing from the installed package ({e}); reinstall kdkit"
            ) from e
        expected = EMBEDDED_MNIST_SMALL_MD5[fname]
        actual = hashlib.md5(raw).hexdigest()
        if actual != expected:
            raise DataError(
                f"{src}: embedded file is corrupt: expected md5 {expected}, found {actual}; reinstall kdkit"
            )
        arrays.append(parse_idx(gunzip_if_needed(raw, src), src))
    images_name, labels_name = MNIST_SPLIT_FILES[split]
    return mnist_arrays(arrays[0], arrays[1], images_name, labels_name)
