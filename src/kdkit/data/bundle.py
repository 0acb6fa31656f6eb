"""A data set as one run sees it: train/val/test splits, normalisation, the split record, and loaders.

Images are `ArrayDataset`s served by `InMemoryLoader`; sentences (data.dataset sst2 or tsv:PATH) are tokenised
`TextDataset`s served by the length-bucketed `BucketLoader`. For sentences the bundle's `in_channels` is the
tokenizer's vocabulary size and `image_size` the longest sequence, so models are built the same way.
Language-model text (data.dataset tinyshakespeare or text:PATH) is `LMDataset`s of fixed-length blocks served by
`TokenLoader`: one label per token, the vocabulary as the classes, the block size as `image_size`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from kdkit.config import DataConfig, LMDataConfig, is_lm_dataset, is_text_dataset
from kdkit.data.class_lists import align_classes, empty_class_warnings
from kdkit.data.imagefolder import TRAIN_SPLIT, MissingSplitError
from kdkit.data.lm_sources import LMDataset, load_lm_splits
from kdkit.data.loader import Augment, AugParams, InMemoryLoader, channel_stats
from kdkit.data.sources import ArrayDataset, load_dataset
from kdkit.data.splits import (
    hold_out_test,
    limit_per_class,
    limit_uniform,
    split_labeled,
    split_train_val,
    val_mask,
)
from kdkit.data.text import BucketLoader, TextDataset, tokenize
from kdkit.data.text_augment import TextAugment, augment_dataset
from kdkit.data.text_sources import read_text_splits, text_tokenizer
from kdkit.data.tokens import TokenLoader
from kdkit.errors import ConfigError, DataError
from kdkit.tasks import IMAGE_CLASSIFICATION, TOKEN_CLASSIFICATION, ClassificationTask

# Keys of a recorded split that must agree before a model's validation images can be drawn again.
_SAME_DRAW = ("dataset", "images", "train_limit", "test_held_out")

# The per-channel statistics of ImageNet's training images, which ImageNet-pretrained weights expect.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class DataBundle:
    """The splits of one data set and what models need to know about it."""

    train: ArrayDataset | TextDataset | LMDataset
    val: ArrayDataset | TextDataset | LMDataset
    test: ArrayDataset | TextDataset | LMDataset
    mean: list[float]
    std: list[float]
    unlabeled: ArrayDataset | None = None  # training images whose labels are hidden (data.labeled_*)
    # How train and val were drawn from the training set: recorded in every model checkpoint, so that a run
    # loading a model can tell how many of its validation images that model was trained on.
    split: dict[str, Any] = dataclasses.field(default_factory=dict)
    full_labels: np.ndarray | None = None  # labels of the whole training set the split was drawn from
    test_source: str = ""  # where the test images come from, said in the console and in summary.json
    # Conditions that change what a number means but do not stop the run: printed, and kept in summary.json.
    warnings: list[str] = dataclasses.field(default_factory=list)
    # Sentence data only: the tokenizer's vocabulary, the longest sequence, length bucketing, augmented sentences.
    vocab_size: int | None = None
    max_length: int | None = None
    bucket_chunk: int = 50
    augmented: TextDataset | None = None  # Tang et al.'s augmented sentences (unlabeled)
    text: dict[str, Any] | None = (
        None  # data.text as run (tokenizer, max_length, columns): kept in checkpoints
    )
    # Language-model text only: data.lm as run with the tokenizer's hash (kept in checkpoints), and the tokenizer.
    lm: dict[str, Any] | None = None
    tokenizer: Any = None

    @property
    def is_text(self) -> bool:
        """Return True for sentence data (token ids), False for images."""
        return isinstance(self.train, TextDataset)

    @property
    def is_lm(self) -> bool:
        """Return True for language-model text (blocks of token ids, one label per token)."""
        return isinstance(self.train, LMDataset)

    @property
    def task(self) -> ClassificationTask:
        """Return what a batch feeds a model: images, or token ids with their attention mask."""
        return TOKEN_CLASSIFICATION if self.is_text or self.is_lm else IMAGE_CLASSIFICATION

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
        """Return the image channel count (sentences: the vocabulary size, a one-hot token's channels)."""
        if self.vocab_size is not None:
            return self.vocab_size
        assert isinstance(self.train, ArrayDataset)
        return int(self.train.images.shape[1])

    @property
    def image_size(self) -> int:
        """Return the image height (images are square; sentences: the longest sequence in tokens)."""
        if self.max_length is not None:
            return self.max_length
        assert isinstance(self.train, ArrayDataset)
        return int(self.train.images.shape[2])


def _count_or_fraction(size: float) -> int | float:
    """A config size: a count when it is at least 1, else a fraction."""
    return int(size) if size >= 1 else float(size)


def _train_and_test(cfg: DataConfig) -> tuple[ArrayDataset, ArrayDataset, str, list[str]]:
    """Return (training set, test set labelled by the training classes, where the test set came from, warnings).

    The class list is the training split's; every other split is checked against it before anything trains.
    """
    kwargs: dict[str, Any] = {"root": cfg.root, "download": cfg.download, "image_size": cfg.image_size}
    is_folder = cfg.dataset.startswith("imagefolder:")
    if cfg.splits is not None and not is_folder:
        raise ConfigError(
            f"data.splits names the folders of an imagefolder:<path> source; {cfg.dataset!r} has the fixed "
            "splits train and test"
        )
    train_folder = cfg.splits.train if cfg.splits is not None else TRAIN_SPLIT
    full = load_dataset(cfg.dataset, train_folder, **kwargs)
    test_folder = cfg.splits.test if cfg.splits is not None and cfg.splits.test else "test"
    if cfg.test_size is None:
        test = load_dataset(cfg.dataset, test_folder, **kwargs)
        where = f"split {test_folder!r}" + (f" (training split {train_folder!r})" if is_folder else "")
        test, warnings = align_classes(full, test, where, cfg.dataset, cfg.allow_missing_test_classes)
        what = f"folder {test_folder!r}" if is_folder else f"the {cfg.dataset} test split"
        return full, test, f"test images from {what}", warnings
    if not is_folder:
        raise ConfigError(
            f"data.test_size: {cfg.dataset!r} has its own test split; remove data.test_size to evaluate on it"
        )
    try:
        load_dataset(cfg.dataset, test_folder, **kwargs)
    except MissingSplitError:
        pass
    else:
        raise ConfigError(
            f"data.test_size: {cfg.dataset} has a test split folder {test_folder!r}; remove data.test_size to "
            "evaluate on it (or name the folders with data.splits)"
        )
    train, test = hold_out_test(full, _count_or_fraction(cfg.test_size), cfg.test_seed)
    what = (
        f"test images: {len(test)} held out of folder {train_folder!r} per class by data.test_size="
        f"{cfg.test_size} and data.test_seed={cfg.test_seed} (the source has no test split)"
    )
    return train, test, what, []


def _limited(cfg: DataConfig, full: Any, test: Any, split_seed: int, warnings: list[str]) -> tuple[Any, Any]:
    """Return (training set, test set) cut to data.train_limit and data.test_limit (warnings appended)."""
    if cfg.train_limit is not None and cfg.train_limit < len(full):
        # Per class, except where labels are hidden: a per-class draw would read them.
        draw = limit_uniform if cfg.semi_supervised else limit_per_class
        full = draw(full, cfg.train_limit, split_seed)
        warnings += empty_class_warnings(full, f"the training set (data.train_limit={cfg.train_limit})")
    if cfg.test_limit is not None and cfg.test_limit < len(test):
        # Evenly spaced, not the first N: folder-ordered test sets list one class after another.
        keep = torch.linspace(0, len(test) - 1, cfg.test_limit).round().long().numpy()
        test = test.subset(keep, name=f"{test.name}[{cfg.test_limit} evenly spaced]")
        warnings += empty_class_warnings(test, f"the test set (data.test_limit={cfg.test_limit})")
    return full, test


def _val_split(cfg: DataConfig, full: Any, split_seed: int) -> tuple[Any, Any, dict[str, Any]]:
    """Return (train, val, the split record): validation held out of the training set by the split seed."""
    val_size: int | float = int(cfg.val_size) if cfg.val_size >= 1 else float(cfg.val_size)
    if isinstance(val_size, int) and val_size >= len(full):
        raise ConfigError(f"data.val_size: {val_size} leaves no training samples (the set has {len(full)})")
    train, val = split_train_val(full, val_size, split_seed)
    split = {"dataset": cfg.dataset, "images": len(full), "val_size": val_size, "split_seed": split_seed}
    if cfg.train_limit is not None:
        split["train_limit"] = cfg.train_limit  # drawn per class by split_seed (before: the first N images)
    return train, val, split


def _load_text_data(cfg: DataConfig, seed: int) -> DataBundle:
    """Return the tokenised splits of sentence data, and Tang's augmented sentences when data.text.augment."""
    t = cfg.text
    assert t is not None
    tok = text_tokenizer(cfg)
    full, test, test_source = read_text_splits(cfg)
    full, test = tokenize(full, tok, t.max_length), tokenize(test, tok, t.max_length)
    split_seed = seed if cfg.split_seed is None else cfg.split_seed
    warnings: list[str] = []
    full, test = _limited(cfg, full, test, split_seed, warnings)
    train, val, split = _val_split(cfg, full, split_seed)
    augmented = None
    if t.augment is not None:
        mask = tok.mask_token or tok.unk_token
        augmented, _ = augment_dataset(train, TextAugment(**t.augment.model_dump()), mask, seed)
        augmented = tokenize(augmented, tok, t.max_length)
    return DataBundle(
        train=train,
        val=val,
        test=test,
        mean=[],
        std=[],
        split=split,
        full_labels=full.labels,
        test_source=test_source,
        warnings=warnings,
        vocab_size=len(tok),
        max_length=t.max_length,
        bucket_chunk=t.bucket_chunk,
        augmented=augmented,
        text=t.model_dump(mode="json", exclude={"augment", "bucket_chunk"}),
    )


def _load_lm_data(cfg: DataConfig) -> DataBundle:
    """Return the blocks of language-model text, split by position (data.lm), and its tokenizer."""
    train, val, test, tokenizer, record = load_lm_splits(cfg)
    lm = cfg.lm
    assert lm is not None
    split = {"dataset": cfg.dataset, "lm_split": list(lm.split), "block_size": lm.block_size}
    where = f"test text: the last {lm.split[2]:.0%} of {record['file']} ({record['tokens']['test']} tokens)"
    return DataBundle(
        train=train,
        val=val,
        test=test,
        mean=[],
        std=[],
        split=split,
        test_source=where,
        vocab_size=len(train.classes),
        max_length=lm.block_size,
        lm=record,
        tokenizer=tokenizer,
    )


def load_data(cfg: DataConfig, seed: int) -> DataBundle:
    """Return train/val/test splits: validation held out of the training set by seed, test untouched."""
    if is_lm_dataset(cfg.dataset):
        if cfg.lm is None:
            cfg = cfg.model_copy(update={"lm": LMDataConfig()})
        return _load_lm_data(cfg)
    if is_text_dataset(cfg.dataset):
        return _load_text_data(cfg, seed)
    full, test, test_source, warnings = _train_and_test(cfg)
    split_seed = seed if cfg.split_seed is None else cfg.split_seed
    held_out = {"test_size": cfg.test_size, "test_seed": cfg.test_seed} if cfg.test_size is not None else None
    full, test = _limited(cfg, full, test, split_seed, warnings)
    train, val, split = _val_split(cfg, full, split_seed)
    if held_out is not None:
        split["test_held_out"] = held_out
    if cfg.normalize == "imagenet":
        if full.images.shape[1] != 3:
            raise ConfigError(
                f"data.normalize: imagenet needs RGB images; {cfg.dataset} has {full.images.shape[1]} channel(s)"
            )
        mean, std = list(IMAGENET_MEAN), list(IMAGENET_STD)
    elif cfg.normalize:
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
        test_source=test_source,
        warnings=warnings,
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
    if any(split.get(key) != mine.get(key) for key in _SAME_DRAW):
        return None
    if not len(bundle.val):
        return 0
    try:
        theirs = val_mask_of(bundle.full_labels, bundle.num_classes, split)
    except (KeyError, TypeError, ValueError, DataError):
        return None
    return int((bundle.val_of_full & ~theirs).sum())


def make_loader(
    ds: ArrayDataset | TextDataset,
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
    by_length: bool = False,
) -> InMemoryLoader | BucketLoader | TokenLoader:
    """Return an in-memory loader over a split with the bundle's normalisation (sentences: length-bucketed).

    `by_length` (sentences, unshuffled): serve the split sorted by length, for evaluations, where the order of
    the sentences does not matter and padding does.
    """
    if isinstance(ds, LMDataset):
        if train and augment is not None and augment.enabled:
            raise ConfigError("train.augment (crops, jitter, flips) is for images, not language-model text")
        if draws is not None or draw_extras:
            raise ConfigError("cached augmentation draws are for images; language-model text has none")
        return TokenLoader(
            ds.input_ids,
            ds.attention_mask,
            ds.labels,
            batch_size,
            shuffle=train,
            seed=seed,
            trim=False,
            extras=extras,
        )
    if isinstance(ds, TextDataset):
        if train and augment is not None and augment.enabled:
            raise ConfigError(
                "train.augment (crops, jitter, flips) is for images; sentences take data.text.augment"
            )
        if draws is not None or draw_extras:
            raise ConfigError("cached augmentation draws are for images; sentence data has none")
        chunk = bundle.bucket_chunk
        return BucketLoader(
            ds, batch_size, shuffle=train, seed=seed, chunk=chunk, by_length=by_length, extras=extras
        )
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
        num_classes=bundle.num_classes,
    )
