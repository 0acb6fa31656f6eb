"""Data sources: MNIST (IDX), CIFAR-10/100 (python batches), ImageFolder dirs/archives, all as numpy arrays."""

from kdkit.data.cache import DataCacheWarning
from kdkit.data.idx import read_idx, write_idx
from kdkit.data.sources import (
    CIFAR10_CLASSES,
    CIFAR100_CLASSES,
    DATASET_FILES,
    KNOWN_NAMES,
    MNIST_CLASSES,
    ArrayDataset,
    data_root,
    load_dataset,
)
from kdkit.data.splits import UNLABELED, omit_classes, split_labeled, split_train_val, val_mask
from kdkit.download import download

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR100_CLASSES",
    "DATASET_FILES",
    "KNOWN_NAMES",
    "MNIST_CLASSES",
    "UNLABELED",
    "ArrayDataset",
    "DataCacheWarning",
    "data_root",
    "download",
    "load_dataset",
    "omit_classes",
    "read_idx",
    "split_labeled",
    "split_train_val",
    "val_mask",
    "write_idx",
]
