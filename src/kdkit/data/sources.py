"""Named data sources: ``ArrayDataset``, the dataset catalogue, ``data_root`` and ``load_dataset``."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kdkit.data import cache as cache_mod
from kdkit.data.cifar import assemble, read_batches_archive, read_batches_dir
from kdkit.data.idx import (
    EMBEDDED_MNIST_SMALL_MD5,
    MNIST_SPLIT_FILES,
    load_embedded_mnist_small,
    load_mnist_files,
)
from kdkit.data.imagefolder import decode_all, is_tar_name, scan_archive, scan_directory, select_samples
from kdkit.download import download as download_file
from kdkit.errors import DataError


@dataclass
class ArrayDataset:
    """Images (N, C, H, W) uint8, labels (N,) int64 and class names; label ``i`` is ``classes[i]``."""

    images: np.ndarray
    labels: np.ndarray
    classes: list[str]
    name: str

    def __post_init__(self) -> None:
        # Normalise once here so every consumer (collate, torch.from_numpy) can rely on the layout.
        if not isinstance(self.images, np.ndarray) or self.images.dtype != np.uint8 or self.images.ndim != 4:
            found = (
                f"{self.images.dtype} array of shape {self.images.shape}"
                if isinstance(self.images, np.ndarray)
                else type(self.images).__name__
            )
            raise DataError(
                f"dataset {self.name!r}: images must be a uint8 array (N, C, H, W), found {found}"
            )
        labels = np.asarray(self.labels)
        if labels.ndim != 1 or labels.shape[0] != self.images.shape[0]:
            raise DataError(
                f"dataset {self.name!r}: expected {self.images.shape[0]} labels (one per image), "
                f"found labels of shape {labels.shape}"
            )
        if labels.size and not np.issubdtype(labels.dtype, np.integer):
            raise DataError(f"dataset {self.name!r}: labels must be integers, found dtype {labels.dtype}")
        self.images = np.ascontiguousarray(self.images)
        self.labels = np.ascontiguousarray(labels, dtype=np.int64)
        self.classes = [str(c) for c in self.classes]

    def __len__(self) -> int:
        """Number of samples."""
        return int(self.images.shape[0])

    @property
    def num_classes(self) -> int:
        """Number of classes (length of ``classes``, including classes with no samples here)."""
        return len(self.classes)

    def subset(self, indices: np.ndarray, name: str | None = None) -> ArrayDataset:
        """Return a copy holding only the samples at ``indices`` (integer indices or a boolean mask)."""
        idx = np.asarray(indices)
        if idx.dtype != np.bool_ and idx.size and not np.issubdtype(idx.dtype, np.integer):
            raise DataError(
                f"dataset {self.name!r}: subset indices must be integers or a boolean mask, found {idx.dtype}"
            )
        if idx.size == 0:
            idx = idx.astype(np.int64)  # an empty float array from np.array([]) must still index
        return ArrayDataset(
            images=self.images[idx],
            labels=self.labels[idx],
            classes=list(self.classes),
            name=name if name is not None else f"{self.name}[subset]",
        )


MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)

# md5 of the .gz files as distributed, and of their decompressed content (a re-compressed copy has a
# different .gz checksum but the same content).
_MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": ("f68b3c2dcbeaaa9fbdd348bbdeb94873", "6bbc9ace898e44ae57da46a324031adb"),
    "train-labels-idx1-ubyte.gz": ("d53e105ee54ea40749a09fcbcd1e9432", "a25bea736e30d166cdddb491f175f624"),
    "t10k-images-idx3-ubyte.gz": ("9fb629c4189551a2d022fa330f9573f3", "2646ac647ad5339dbf082846283269ea"),
    "t10k-labels-idx1-ubyte.gz": ("ec29112dd5afa0611ce80d1b7f02629c", "27ae3e4e09519cfbb04c329615203637"),
}

MNIST_CLASSES = [str(d) for d in range(10)]

CIFAR10_CLASSES = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
]  # fmt: skip

CIFAR100_CLASSES = [
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle",
    "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle",
    "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur",
    "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard",
    "lamp", "lawn_mower", "leopard", "lion", "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain",
    "mouse", "mushroom", "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree",
    "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "rocket",
    "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider",
    "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank", "telephone", "television", "tiger", "tractor",
    "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm",
]  # fmt: skip

# Per dataset: "dirs" are searched below the data root in order (downloads go to the first);
# "files" maps each downloadable file to its checksums and mirror URLs.
DATASET_FILES: dict[str, dict[str, Any]] = {
    "mnist": {
        "dirs": ("mnist", "MNIST/raw", "."),
        "splits": {s: list(f) for s, f in MNIST_SPLIT_FILES.items()},
        "files": {
            name: {"md5": gz_md5, "uncompressed_md5": raw_md5, "urls": [m + name for m in MNIST_MIRRORS]}
            for name, (gz_md5, raw_md5) in _MNIST_MD5.items()
        },
        "classes": MNIST_CLASSES,
    },
    "mnist-small": {
        "embedded": "embedded/mnist-small",
        "splits": {s: list(f) for s, f in MNIST_SPLIT_FILES.items()},
        "files": {name: {"md5": md5, "urls": []} for name, md5 in EMBEDDED_MNIST_SMALL_MD5.items()},
        "classes": MNIST_CLASSES,
    },
    "cifar10": {
        "dirs": (".", "cifar10", "cifar-10"),
        "archive": "cifar-10-python.tar.gz",
        "extracted_dir": "cifar-10-batches-py",
        "splits": {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]},
        "meta": ("batches.meta", "label_names"),
        "label_key": "labels",
        "files": {
            "cifar-10-python.tar.gz": {
                "md5": "c58f30108f718f92721af3b95e74349a",
                "urls": ["https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"],
            }
        },
        "classes": CIFAR10_CLASSES,
    },
    "cifar100": {
        "dirs": (".", "cifar100", "cifar-100"),
        "archive": "cifar-100-python.tar.gz",
        "extracted_dir": "cifar-100-python",
        "splits": {"train": ["train"], "test": ["test"]},
        "meta": ("meta", "fine_label_names"),
        "label_key": "fine_labels",
        "files": {
            "cifar-100-python.tar.gz": {
                "md5": "eb9058c3a382ffc7106e4002c42a8d85",
                "urls": ["https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"],
            }
        },
        "classes": CIFAR100_CLASSES,
    },
    "cifar10-jpg": {
        "dirs": (".",),
        "archive": "cifar10-jpg.tar.gz",
        "extracted_dir": "cifar10-jpg",
        "splits": {"train": [], "test": []},
        "files": {"cifar10-jpg.tar.gz": {"md5": None, "urls": []}},  # no public URL: copy it in by hand
        "classes": CIFAR10_CLASSES,
    },
}


# Bump when a loader's output for the same source files changes, so stale cache entries are not reused.
# imagefolder 2: an archive with a class folder without images is refused (version 1 cached it without that class).
LOADER_VERSIONS = {"cifar-archive": 1, "imagefolder": 2}

KNOWN_NAMES = ("mnist", "mnist-small", "cifar10", "cifar100", "cifar10-jpg", "imagefolder:<path>")
NATIVE_SIZE = {"mnist": 28, "mnist-small": 28, "cifar10": 32, "cifar100": 32}


def _root_and_origin(root: str | os.PathLike | None) -> tuple[Path, str]:
    """The data root and a phrase saying where it came from (used in error messages)."""
    if root is not None:
        return Path(root).expanduser(), "the root argument"
    env = os.environ.get("KDKIT_DATA")
    if env:
        return Path(env).expanduser(), "the KDKIT_DATA environment variable"
    return Path.home() / ".cache" / "kdkit" / "data", "the default location (KDKIT_DATA is not set)"


def data_root(root: str | os.PathLike | None = None) -> Path:
    """Data directory: explicit ``root``, else ``$KDKIT_DATA``, else ``~/.cache/kdkit/data``."""
    return _root_and_origin(root)[0]


def _not_found(
    dataset: str,
    split: str,
    expected: list[str],
    searched: list[Path],
    root: Path,
    origin: str,
    downloadable: bool,
) -> DataError:
    """A DataError listing the expected files, every directory searched and how to fix it."""
    fixes = "put the files in one of those directories, set KDKIT_DATA to the directory that holds them, or pass root=..."
    if downloadable:
        fixes += ", or pass download=True (needs a network) to fetch them"
    else:
        fixes += f" (no public download is known for {dataset!r}; copy it in by hand)"
    lines = [
        f"dataset {dataset!r} (split {split!r}) not found.",
        "Expected: " + "; ".join(expected),
        "Searched directories:",
        *(f"  {d}" for d in searched),
        f"Data root {root} comes from {origin}.",
        f"To fix: {fixes}.",
    ]
    return DataError("\n".join(lines))


def _check_split(dataset: str, split: str, allowed: tuple[str, ...]) -> None:
    if split not in allowed:
        raise DataError(f"dataset {dataset!r}: unknown split {split!r}; expected one of {', '.join(allowed)}")


def _search_dirs(root: Path, dirs: tuple[str, ...]) -> list[Path]:
    return [root if d == "." else root / d for d in dirs]


def _fetch(dataset: str, fname: str, dest_dir: Path) -> Path:
    """Download one catalogued file into ``dest_dir``, trying each mirror in turn."""
    info = DATASET_FILES[dataset]["files"][fname]
    errors = []
    for url in info["urls"]:
        try:
            return download_file(url, dest_dir / fname, md5=info["md5"])
        except DataError as e:
            errors.append(str(e))
    raise DataError(f"could not download {fname} for {dataset!r} from any mirror:\n  " + "\n  ".join(errors))


def _find_mnist(dirs: list[Path], names: list[str]) -> list[Path] | None:
    """First directory holding every file, each as .gz or decompressed; None if none does."""
    for d in dirs:
        paths = []
        for n in names:
            candidates = [d / n, d / n.removesuffix(".gz")]
            hit = next((c for c in candidates if c.is_file()), None)
            if hit is None:
                break
            paths.append(hit)
        else:
            return paths
    return None


def _load_mnist(split: str, root: str | os.PathLike | None, download: bool) -> ArrayDataset:
    spec = DATASET_FILES["mnist"]
    base, origin = _root_and_origin(root)
    dirs = _search_dirs(base, spec["dirs"])
    names = spec["splits"][split]
    paths = _find_mnist(dirs, names)
    if paths is None and download:
        paths = [_fetch("mnist", n, dirs[0]) for n in names]
    if paths is None:
        expected = [f"{n} (or decompressed {n.removesuffix('.gz')})" for n in names]
        raise _not_found("mnist", split, expected, dirs, base, origin, downloadable=True)
    images, labels = load_mnist_files(paths[0], paths[1])
    return ArrayDataset(images, labels, list(spec["classes"]), f"mnist/{split}")


def _load_cifar(
    dataset: str, split: str, root: str | os.PathLike | None, download: bool, cache: bool
) -> ArrayDataset:
    spec = DATASET_FILES[dataset]
    base, origin = _root_and_origin(root)
    dirs = _search_dirs(base, spec["dirs"])
    files, (meta_file, meta_key) = spec["splits"][split], spec["meta"]
    inner, archive_name = spec["extracted_dir"], spec["archive"]
    opts = {
        "label_key": spec["label_key"],
        "meta_key": meta_key,
        "meta_name": meta_file,
        "default_classes": spec["classes"],
    }
    name = f"{dataset}/{split}"

    # Extracted batches load as fast as a cache would, so they are read directly.
    for d in dirs:
        if all((d / inner / f).is_file() for f in files):
            blobs, meta = read_batches_dir(d / inner, files, meta_file)
            images, labels, classes = assemble(blobs, meta, location=str(d / inner), **opts)
            return ArrayDataset(images, labels, classes, name)

    archive = next((d / archive_name for d in dirs if (d / archive_name).is_file()), None)
    if archive is None and download:
        archive = _fetch(dataset, archive_name, dirs[0])
    if archive is None:
        expected = [f"{inner}/{{{', '.join(files)}}}", f"or the archive {archive_name}"]
        raise _not_found(dataset, split, expected, dirs, base, origin, downloadable=True)

    def build() -> ArrayDataset:
        """Read the split's batches from the archive (cache miss)."""
        blobs, meta = read_batches_archive(archive, inner, files, meta_file)
        images, labels, classes = assemble(blobs, meta, location=f"{archive}:{inner}", **opts)
        return ArrayDataset(images, labels, classes, name)

    key = {
        "loader": f"cifar-archive-v{LOADER_VERSIONS['cifar-archive']}",
        "dataset": dataset,
        "sources": cache_mod.file_signature([archive]),
        "split": split,
    }
    return _cached(build, base, name, cache, key)


def _cached(
    build: Callable[[], ArrayDataset], base: Path, name: str, cache: bool, key: dict, label: str | None = None
) -> ArrayDataset:
    """Return the cached dataset for ``key`` if valid, else ``build()`` it and store it."""
    if not cache:
        return build()
    path = cache_mod.cache_file(cache_mod.cache_dir(base), label or name, **key)
    hit = cache_mod.load_cached(path)
    if hit is not None:
        images, labels, classes = hit
        return ArrayDataset(images, labels, classes, name)
    ds = build()
    cache_mod.save_cached(path, ds.images, ds.labels, ds.classes)
    return ds


def _load_folder(
    path: Path, split: str, image_size: int | None, cache: bool, base: Path, name: str
) -> ArrayDataset:
    """Load one split of an ImageFolder directory or tar archive (through the cache)."""
    source = str(path)
    folders: set[tuple[str, ...]] = set()
    if path.is_dir():
        dir_files = scan_directory(path, folders)
        signature = cache_mod.tree_signature(path, dir_files.values())
        # The cache key covers image files only, so folders are checked on every load, before the cache.
        selected = select_samples(dir_files, split, source, folders)
    elif is_tar_name(path):
        dir_files = None
        signature = cache_mod.file_signature([path])
    else:
        raise DataError(
            f"{path}: expected a directory or a .tar/.tar.gz/.tgz archive of class folders, found a file"
        )

    def build() -> ArrayDataset:
        """Scan, select the split and decode every image (cache miss)."""
        if dir_files is not None:
            files = dir_files
            items_of = lambda parts: (str(dir_files[parts]), dir_files[parts])  # noqa: E731
            classes, samples = selected
        else:
            files = scan_archive(path, folders)
            items_of = lambda parts: (f"{path}:{'/'.join(parts)}", files[parts])  # noqa: E731
            classes, samples = select_samples(files, split, source, folders)
        images = decode_all([items_of(p) for p, _ in samples], image_size, source)
        return ArrayDataset(images, [label for _, label in samples], classes, name)

    key = {
        "loader": f"imagefolder-v{LOADER_VERSIONS['imagefolder']}",
        "sources": signature,
        "split": split,
        "image_size": image_size,
    }
    label = f"{name}-{image_size}px" if image_size else name
    return _cached(build, base, name, cache, key, label)


def _load_cifar10_jpg(
    split: str, root: str | os.PathLike | None, image_size: int | None, cache: bool
) -> ArrayDataset:
    spec = DATASET_FILES["cifar10-jpg"]
    base, origin = _root_and_origin(root)
    dirs = _search_dirs(base, spec["dirs"])
    candidates = [c for d in dirs for c in (d / spec["archive"], d / spec["extracted_dir"])]
    source = next((c for c in candidates if c.exists()), None)
    if source is None:
        expected = [spec["archive"], f"or the directory {spec['extracted_dir']}/{{train,test}}/<class>/*.jpg"]
        raise _not_found("cifar10-jpg", split, expected, dirs, base, origin, downloadable=False)
    ds = _load_folder(source, split, image_size, cache, base, f"cifar10-jpg/{split}")
    if ds.classes != spec["classes"]:
        raise DataError(
            f"{source}: expected the CIFAR-10 classes {', '.join(spec['classes'])}, found {', '.join(ds.classes)}"
        )
    return ds


def _load_imagefolder(
    spec_path: str, split: str, root: str | os.PathLike | None, image_size: int | None, cache: bool
) -> ArrayDataset:
    if not spec_path:
        raise DataError(
            "dataset 'imagefolder:' needs a path, e.g. 'imagefolder:/data/flowers' or 'imagefolder:pets.tar.gz'"
        )
    base, origin = _root_and_origin(root)
    p = Path(spec_path).expanduser()
    # A relative path is tried from the working directory first, then below the data root.
    candidates = [p] if p.is_absolute() else [Path.cwd() / p, base / p]
    path = next((c for c in candidates if c.exists()), None)
    if path is None:
        expected = [f"{spec_path} (a directory or a .tar/.tar.gz/.tgz archive of class folders)"]
        searched = [c.parent for c in candidates]
        raise _not_found(
            f"imagefolder:{spec_path}", split, expected, searched, base, origin, downloadable=False
        )
    label = path.name
    for suffix in (".tar.gz", ".tgz", ".tar"):
        label = label.removesuffix(suffix)
    return _load_folder(path, split, image_size, cache, base, f"imagefolder:{label}/{split}")


def load_dataset(
    name: str,
    split: str = "train",
    root: str | os.PathLike | None = None,
    download: bool = False,
    image_size: int | None = None,
    cache: bool = True,
) -> ArrayDataset:
    """Load a named dataset split into memory; see ``KNOWN_NAMES`` (``cache`` applies to decoded archives/folders)."""
    if image_size is not None and (
        isinstance(image_size, bool) or not isinstance(image_size, int) or image_size <= 0
    ):
        raise DataError(f"image_size must be a positive int or None, found {image_size!r}")
    if name.startswith("imagefolder:"):
        return _load_imagefolder(name[len("imagefolder:") :], split, root, image_size, cache)
    if name not in DATASET_FILES:
        raise DataError(f"unknown dataset {name!r}; expected one of {', '.join(KNOWN_NAMES)}")
    if name in NATIVE_SIZE and image_size not in (None, NATIVE_SIZE[name]):
        raise DataError(
            f"dataset {name!r} has {NATIVE_SIZE[name]}x{NATIVE_SIZE[name]} images; image_size={image_size} is only "
            "supported for cifar10-jpg and imagefolder datasets (resize in the model's input transform instead)"
        )
    _check_split(name, split, tuple(DATASET_FILES[name]["splits"]))
    if name == "mnist-small":
        images, labels = load_embedded_mnist_small(split)
        return ArrayDataset(images, labels, list(DATASET_FILES[name]["classes"]), f"mnist-small/{split}")
    if name == "mnist":
        return _load_mnist(split, root, download)
    if name in ("cifar10", "cifar100"):
        return _load_cifar(name, split, root, download, cache)
    return _load_cifar10_jpg(split, root, image_size, cache)
