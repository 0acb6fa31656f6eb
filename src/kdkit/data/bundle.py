"""A data set as one run sees it: train/val/test splits, normalisation, the split record, and loaders."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from kdkit.config import DataConfig
from kdkit.data.loader import Augment, AugParams, InMemoryLoader, channel_stats
from kdkit.data.sources import ArrayDataset, load_dataset
from kdkit.data.splits import split_labeled, split_train_val, val_mask
from kdkit.errors import ConfigError, DataError


@dataclass
class DataBundle:
    """The splits of one data set and what models need to know about it."""

    train: ArrayDataset
    val: ArrayDataset
    test: ArrayDataset
    mean: list[float]
    std: list[float]
    unlabeled: ArrayDataset | None = None  # training images whose labels are hidden (data.labeled_*)
    # How train and val were drawn from the training set: recorded in every model checkpoint, so that a run
    # loading a model can tell how many of its validation images that model was trained on.
    split: dict[str, Any] = dataclasses.field(default_factory=dict)
    full_labels: np.ndarray | None = None  # labels of the whole training set the split was drawn from

    @property
    def val_of_full(self) -> np.ndarray | None:
        """Which images of the whole training set are this run's validation images (drawn again from the split)."""
        if self.full_labels is None or not self.split:
            return None
        return val_mask_of(self.full_labels, self.num_classes, self.split)

    @property
    def num_classes(self) -> int:
        """Return the number of classes."""
        return len(self.train.classes)

    @property
    def in_channels(self) -> int:
        """Return the image channel count."""
        return int(self.train.images.shape[1])

    @property
    def image_size(self) -> int:
        """Return the image height (images are square)."""
        return int(self.train.images.shape[2])


def load_data(cfg: DataConfig, seed: int) -> DataBundle:
    """Return train/val/test splits: validation held out of the training set by seed, test untouched."""
    kwargs: dict[str, Any] = {"root": cfg.root, "download": cfg.download, "image_size": cfg.image_size}
    full = load_dataset(cfg.dataset, "train", **kwargs)
    test = load_dataset(cfg.dataset, "test", **kwargs)
    if cfg.train_limit is not None and cfg.train_limit < len(full):
        full = full.subset(torch.arange(cfg.train_limit).numpy(), name=f"{full.name}[:{cfg.train_limit}]")
    if cfg.test_limit is not None and cfg.test_limit < len(test):
        # Evenly spaced, not the first N: folder-ordered test sets list one class after another.
        keep = torch.linspace(0, len(test) - 1, cfg.test_limit).round().long().numpy()
        test = test.subset(keep, name=f"{test.name}[{cfg.test_limit} evenly spaced]")
    val_size: int | float = int(cfg.val_size) if cfg.val_size >= 1 else float(cfg.val_size)
    if isinstance(val_size, int) and val_size >= len(full):
        raise ConfigError(f"data.val_size: {val_size} leaves no training images (the set has {len(full)})")
    split_seed = seed if cfg.split_seed is None else cfg.split_seed
    train, val = split_train_val(full, val_size, split_seed)
    split = {"dataset": cfg.dataset, "images": len(full), "val_size": val_size, "split_seed": split_seed}
    if cfg.normalize:
        mean, std = channel_stats(train.images)
    else:
        mean, std = [0.0] * full.images.shape[1], [1.0] * full.images.shape[1]
    unlabeled = None
    if cfg.semi_supervised:
        # Pixel statistics above cover the unlabeled images too (their pixels are known, their labels are not).
        if cfg.labeled_count is not None and cfg.labeled_count >= len(train):
            raise ConfigError(
                f"data.labeled_count: {cfg.labeled_count} leaves no unlabeled images (training set: {len(train)})"
            )
        labeled = cfg.labeled_count if cfg.labeled_count is not None else cfg.labeled_fraction
        train, unlabeled = split_labeled(train, labeled or 0, seed)
    return DataBundle(
        train=train,
        val=val,
        test=test,
        mean=mean,
        std=std,
        unlabeled=unlabeled,
        split=split,
        full_labels=full.labels,
    )


def val_mask_of(labels: np.ndarray, num_classes: int, split: dict[str, Any]) -> np.ndarray:
    """Return the validation mask of a recorded split (`DataBundle.split`, a checkpoint's `data_split`)."""
    return val_mask(labels, num_classes, split["val_size"], int(split["split_seed"]))


def val_images_trained_on(bundle: DataBundle, split: dict[str, Any] | None) -> int | None:
    """Return how many of the bundle's validation images a model trained on the given split had for training.

    None when that cannot be told: the checkpoint records no split (an older or foreign checkpoint, or one whose
    record is not kdkit's), or it was drawn from another data set or another number of images.
    """
    mine = bundle.split
    if not isinstance(split, dict) or bundle.full_labels is None or not mine:
        return None
    if split.get("dataset") != mine["dataset"] or split.get("images") != mine["images"]:
        return None
    if not len(bundle.val):
        return 0
    try:
        theirs = val_mask_of(bundle.full_labels, bundle.num_classes, split)
    except (KeyError, TypeError, ValueError, DataError):
        return None
    return int((bundle.val_of_full & ~theirs).sum())


def make_loader(
    ds: ArrayDataset,
    bundle: DataBundle,
    batch_size: int,
    *,
    train: bool,
    seed: int = 0,
    augment: Augment | None = None,
    channels_last: bool = False,
    extras: dict[str, torch.Tensor] | None = None,
    draws: AugParams | None = None,
    draw_extras: dict[str, torch.Tensor] | None = None,
) -> InMemoryLoader:
    """Return an in-memory loader over a split with the bundle's normalisation."""
    return InMemoryLoader(
        ds.images,
        ds.labels,
        batch_size,
        shuffle=train,
        seed=seed,
        augment=augment if train else None,
        mean=bundle.mean,
        std=bundle.std,
        channels_last=channels_last,
        extras=extras,
        draws=draws,
        draw_extras=draw_extras,
    )
