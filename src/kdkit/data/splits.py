"""Deterministic train/validation splits and class removal for ``ArrayDataset``."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from kdkit.data.sources import ArrayDataset
from kdkit.errors import DataError


def _val_count(n: int, val_size: int | float, name: str, field: str = "val_size") -> int:
    """Turn an absolute count or a fraction into a number of held-out samples (``field`` names it in errors)."""
    if isinstance(val_size, bool) or not isinstance(val_size, (int, float, np.integer, np.floating)):
        raise DataError(
            f"split of {name!r}: {field} must be an int count or a float fraction, found {val_size!r}"
        )
    if isinstance(val_size, (float, np.floating)):
        if not 0.0 <= val_size < 1.0:
            raise DataError(f"split of {name!r}: a fractional {field} must lie in [0, 1), found {val_size}")
        return int(round(val_size * n))
    if not 0 <= val_size <= n:
        raise DataError(
            f"split of {name!r}: {field} must lie in [0, {n}] (the dataset size), found {val_size}"
        )
    return int(val_size)


def _stratified_quota(counts: np.ndarray, n_val: int) -> np.ndarray:
    """Per-class validation counts proportional to class sizes, summing exactly to ``n_val``."""
    total = int(counts.sum())
    exact = counts * (n_val / total) if total else np.zeros_like(counts, dtype=float)
    quota = np.floor(exact).astype(np.int64)
    # Largest-remainder rounding; ties go to the lower class index (stable sort) so it is deterministic.
    order = np.argsort(-(exact - quota), kind="stable")
    quota[order[: n_val - int(quota.sum())]] += 1
    return quota


def _stratified_mask(
    labels: np.ndarray, num_classes: int, n_pick: int, rng: np.random.Generator
) -> np.ndarray:
    """Return a mask of ``n_pick`` samples drawn per class in proportion to the class sizes."""
    n = len(labels)
    picked = np.zeros(n, dtype=bool)
    if n_pick:
        num = max(num_classes, int(labels.max()) + 1 if n else 0)
        counts = np.bincount(labels, minlength=num)
        quota = _stratified_quota(counts, n_pick)
        for c in range(num):
            if quota[c]:
                members = np.flatnonzero(labels == c)
                picked[rng.choice(members, size=int(quota[c]), replace=False)] = True
    return picked


def val_mask(
    labels: np.ndarray, num_classes: int, val_size: int | float, seed: int, name: str = "dataset"
) -> np.ndarray:
    """Return which samples of a set with these labels `split_train_val` holds out (a boolean mask).

    Only the labels decide the split, so a model's recorded split can be drawn again without its images.
    """
    n_val = _val_count(len(labels), val_size, name)
    return _stratified_mask(labels, num_classes, n_val, np.random.default_rng(seed))


def limit_per_class(ds: ArrayDataset, limit: int, seed: int) -> ArrayDataset:
    """Return ``limit`` samples drawn per class in proportion to its size, by ``seed``; samples keep their order.

    The first N images of a folder-ordered set are the first classes only; a stratified draw keeps every class.
    """
    if limit >= len(ds):
        return ds
    # A stream of its own, so that the draw does not repeat the validation split's choices.
    keep = _stratified_mask(ds.labels, ds.num_classes, int(limit), np.random.default_rng([seed, 0x11A17]))
    return ds.subset(np.flatnonzero(keep), name=f"{ds.name}[{limit} per class by seed {seed}]")


def hold_out_test(ds: ArrayDataset, test_size: int | float, seed: int) -> tuple[ArrayDataset, ArrayDataset]:
    """Return (train, test) of a source without a test split: ``test_size`` images per class by ``seed``."""
    n_test = _val_count(len(ds), test_size, ds.name, "data.test_size")
    if not 0 < n_test < len(ds):
        raise DataError(
            f"data.test_size: {test_size} holds out {n_test} of the {len(ds)} images of {ds.name!r}; "
            "expected at least one test image and at least one left for training"
        )
    # A stream of its own: the validation split, drawn later from what is left, never repeats its choices.
    is_test = _stratified_mask(ds.labels, ds.num_classes, n_test, np.random.default_rng([seed, 0x7E57]))
    return (
        ds.subset(np.flatnonzero(~is_test), name=f"{ds.name}:train"),
        ds.subset(np.flatnonzero(is_test), name=f"{ds.name}:held-out-test"),
    )


def limit_uniform(ds: ArrayDataset, limit: int, seed: int) -> ArrayDataset:
    """Return ``limit`` samples drawn uniformly by ``seed`` without reading a label; samples keep their order.

    For semi-supervised runs: a per-class draw would read the labels that the run hides.
    """
    if limit >= len(ds):
        return ds
    keep = np.sort(np.random.default_rng([seed, 0x11A17]).choice(len(ds), size=int(limit), replace=False))
    return ds.subset(keep, name=f"{ds.name}[{limit} by seed {seed}]")


def split_train_val(ds: ArrayDataset, val_size: int | float, seed: int) -> tuple[ArrayDataset, ArrayDataset]:
    """Split into (train, val), stratified by class, deterministic in ``seed``; samples keep their order."""
    is_val = val_mask(ds.labels, ds.num_classes, val_size, seed, ds.name)
    return (
        ds.subset(np.flatnonzero(~is_val), name=f"{ds.name}:train"),
        ds.subset(np.flatnonzero(is_val), name=f"{ds.name}:val"),
    )


def omit_classes(ds: ArrayDataset, classes: Iterable[int]) -> ArrayDataset:
    """Drop every sample whose label is in ``classes``; labels and class names are kept unchanged."""
    # Labels are not renumbered: a model trained on the reduced set keeps the full output layer,
    # which is what "omitted class" distillation experiments compare against.
    drop = sorted({int(c) for c in classes})
    bad = [c for c in drop if not 0 <= c < ds.num_classes]
    if bad:
        raise DataError(
            f"omit_classes on {ds.name!r}: class ids {bad} out of range; expected ids in [0, {ds.num_classes - 1}]"
        )
    keep = ~np.isin(ds.labels, drop)
    suffix = ",".join(str(c) for c in drop)
    return ds.subset(np.flatnonzero(keep), name=f"{ds.name}-omit{suffix}" if drop else ds.name)


UNLABELED = -1  # the label of an image whose label is hidden from training


def split_labeled(ds: ArrayDataset, labeled: int | float, seed: int) -> tuple[ArrayDataset, ArrayDataset]:
    """Return (labeled, unlabeled): ``labeled`` images (a count, or a fraction in (0, 1)) keep their labels.

    The labeled images are drawn uniformly by ``seed`` without reading any label, and every label of the
    unlabeled part is replaced by ``UNLABELED``: nothing downstream can see a hidden label.
    """
    n = len(ds)
    if isinstance(labeled, (float, np.floating)) and not isinstance(labeled, bool):
        if not 0.0 < labeled < 1.0:
            raise DataError(f"split of {ds.name!r}: a labeled fraction must lie in (0, 1), found {labeled}")
        k = max(1, int(round(labeled * n)))
    else:
        k = int(labeled)
    if not 1 <= k < n:
        raise DataError(
            f"split of {ds.name!r}: {k} labeled images must be at least 1 and fewer than the {n} training images"
        )
    rng = np.random.default_rng([seed, 0x1ABE1])
    is_labeled = np.zeros(n, dtype=bool)
    is_labeled[rng.choice(n, size=k, replace=False)] = True
    hidden = ds.subset(np.flatnonzero(~is_labeled), name=f"{ds.name}:unlabeled")
    hidden.labels = np.full(len(hidden), UNLABELED, dtype=np.int64)
    return ds.subset(np.flatnonzero(is_labeled), name=f"{ds.name}:labeled"), hidden
