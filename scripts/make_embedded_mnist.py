#!/usr/bin/env python
"""Build the MNIST subset embedded in kdkit (10,000 train / 2,000 test images, class-balanced).

Usage: python scripts/make_embedded_mnist.py [MNIST_DIR] [--out DIR] [--seed N]

MNIST_DIR holds the canonical four IDX files (gzip or raw); default $KDKIT_DATA/mnist. The subset is
drawn with a fixed seed from the canonical train resp. test split, kept in canonical order, and written
as reproducible gzip IDX files (same bytes on every run) under the canonical file names. Paste the
printed MD5s into EMBEDDED_MNIST_SMALL_MD5 in src/kdkit/data/idx.py.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "src" / "kdkit" / "data" / "embedded" / "mnist-small"
MAX_TOTAL_BYTES = 3 * 1024 * 1024
SIZES = {"train": 10_000, "test": 2_000}


def _kdkit_data():  # noqa: ANN202 - returns a module
    """Import kdkit.data, from the source tree if kdkit is not installed."""
    try:
        import kdkit.data as data
    except ImportError:
        sys.path.insert(0, str(REPO / "src"))
        import kdkit.data as data
    return data


def balanced_quota(counts: np.ndarray, total: int) -> np.ndarray:
    """Per-class sample counts summing to ``total``, as equal as the class sizes allow."""
    if total > counts.sum():
        raise SystemExit(f"cannot draw {total} samples from {counts.sum()}")
    quota = np.zeros_like(counts)
    remaining = total
    while remaining:
        open_classes = np.flatnonzero(quota < counts)
        per = max(1, remaining // len(open_classes))
        for c in open_classes:  # lower class ids take the remainder first: deterministic
            add = min(per, counts[c] - quota[c], remaining)
            quota[c] += add
            remaining -= add
            if not remaining:
                break
    return quota


def balanced_subset(labels: np.ndarray, total: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of a class-balanced random subset of ``labels``."""
    quota = balanced_quota(np.bincount(labels, minlength=10), total)
    picked = [
        rng.choice(np.flatnonzero(labels == c), size=int(q), replace=False) for c, q in enumerate(quota)
    ]
    return np.sort(np.concatenate(picked))


def main(argv: list[str] | None = None) -> int:
    """Write the embedded MNIST subset and print its file MD5s."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("mnist_dir", nargs="?", help="directory with the canonical MNIST IDX files")
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"output directory (default {DEFAULT_OUT})"
    )
    parser.add_argument("--seed", type=int, default=0, help="subset seed (default 0)")
    args = parser.parse_args(argv)

    data = _kdkit_data()
    from kdkit.data.idx import EMBEDDED_MNIST_SMALL_MD5, MNIST_SPLIT_FILES, gunzip_if_needed, parse_idx
    from kdkit.data.sources import DATASET_FILES

    if args.mnist_dir:
        src = Path(args.mnist_dir)
    elif os.environ.get("KDKIT_DATA"):
        src = Path(os.environ["KDKIT_DATA"]) / "mnist"
    else:
        parser.error("give MNIST_DIR or set KDKIT_DATA")

    args.out.mkdir(parents=True, exist_ok=True)
    written = {}
    for split_no, (split, (img_name, lbl_name)) in enumerate(MNIST_SPLIT_FILES.items()):
        arrays = []
        for name in (img_name, lbl_name):
            path = next((p for p in (src / name, src / name.removesuffix(".gz")) if p.is_file()), None)
            if path is None:
                raise SystemExit(f"{src}: missing {name} (or {name.removesuffix('.gz')})")
            raw = gunzip_if_needed(path.read_bytes(), str(path))
            # The subset must come from canonical MNIST, whatever compression the copy uses.
            expected = DATASET_FILES["mnist"]["files"][name]["uncompressed_md5"]
            if hashlib.md5(raw).hexdigest() != expected:
                raise SystemExit(
                    f"{path}: content md5 {hashlib.md5(raw).hexdigest()} != canonical {expected}"
                )
            arrays.append(parse_idx(raw, str(path)))
        images, labels = arrays
        # One generator per split (seed, split number): each split's subset is independent of the other.
        idx = balanced_subset(
            labels.astype(np.int64), SIZES[split], np.random.default_rng([args.seed, split_no])
        )
        for name, arr in ((img_name, images[idx]), (lbl_name, labels[idx])):
            written[name] = data.write_idx(args.out / name, arr, compress=True)
        counts = np.bincount(labels[idx], minlength=10)
        print(f"{split}: {len(idx)} images from {len(labels)}, per class {counts.tolist()}")

    total = sum(p.stat().st_size for p in written.values())
    print(f"total {total} bytes in {args.out}")
    if total > MAX_TOTAL_BYTES:
        raise SystemExit(f"embedded subset is {total} bytes, over the {MAX_TOTAL_BYTES}-byte budget")
    md5s = {name: hashlib.md5(p.read_bytes()).hexdigest() for name, p in written.items()}
    print("EMBEDDED_MNIST_SMALL_MD5 = {")
    for name, digest in md5s.items():
        print(f'    "{name}": "{digest}",')
    print("}")
    if md5s != EMBEDDED_MNIST_SMALL_MD5:
        print(
            "note: differs from kdkit.data.idx.EMBEDDED_MNIST_SMALL_MD5; update the constant", file=sys.stderr
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
