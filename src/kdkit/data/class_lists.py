"""The class list of a run: taken from the training split and checked against every other split."""

from __future__ import annotations

import numpy as np

from kdkit.data.sources import ArrayDataset
from kdkit.errors import DataError


def present_classes(ds: ArrayDataset) -> list[str]:
    """Return the names of the classes that have at least one image in ``ds``, in class order."""
    counts = np.bincount(ds.labels[ds.labels >= 0], minlength=ds.num_classes)
    return [c for c, k in zip(ds.classes, counts, strict=True) if k]


def _names(names: list[str], limit: int = 20) -> str:
    """Join class names for a message, shortening long lists."""
    more = f" (and {len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def align_classes(
    train: ArrayDataset, other: ArrayDataset, split: str, source: str, allow_missing: bool = False
) -> tuple[ArrayDataset, list[str]]:
    """Return ``other`` labelled by the training split's class list, and the warnings to print.

    A class of ``other`` that the training split lacks is an error (no model of the run predicts it); a
    training class with no image in ``other`` is an error unless ``allow_missing``, then a warning: the
    split's accuracy is then over fewer classes than the model predicts.
    """
    extra = sorted(set(present_classes(other)) - set(train.classes))
    if extra:
        raise DataError(
            f"{source}: split {split!r} has classes that the training split does not have: {_names(extra)} "
            f"(training classes: {_names(train.classes)}); a model trained on the training split cannot "
            "predict them: add training images of those classes or remove their folders from this split"
        )
    missing = [c for c in train.classes if c not in set(present_classes(other))]
    warnings: list[str] = []
    if missing:
        message = (
            f"{source}: split {split!r} has no images of {len(missing)} of the {train.num_classes} training "
            f"classes: {_names(missing)}"
        )
        if not allow_missing:
            raise DataError(
                f"{message}; its accuracy would be over other classes than the model predicts. Add images of "
                "those classes, or set data.allow_missing_test_classes: true to evaluate on the others"
            )
        warnings.append(
            f"{message} (data.allow_missing_test_classes): its accuracy is over the other classes"
        )
    if other.classes == train.classes:
        return other, warnings
    index = {c: i for i, c in enumerate(train.classes)}
    remap = np.array([index.get(c, -1) for c in other.classes], dtype=np.int64)
    labels = np.where(other.labels >= 0, remap[np.clip(other.labels, 0, None)], other.labels)
    return ArrayDataset(other.images, labels, list(train.classes), other.name), warnings


def empty_class_warnings(ds: ArrayDataset, what: str) -> list[str]:
    """Return a warning naming the classes with no image in ``ds`` (none when every class has one)."""
    missing = [c for c in ds.classes if c not in set(present_classes(ds))]
    if not missing:
        return []
    return [f"{what} has no images of {len(missing)} of the {ds.num_classes} classes: {_names(missing)}"]
