"""Sentence data sets by name: `sst2` ($KDKIT_DATA/sst2/{train,dev}.tsv) and `tsv:<folder>`, read and tokenised."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kdkit.config import DataConfig, TextDataConfig
from kdkit.data.sources import data_root
from kdkit.data.text import SST2_CLASSES, TextDataset, load_tsv_dataset
from kdkit.errors import DataError
from kdkit.models.hf import load_tokenizer


def text_files(cfg: DataConfig) -> tuple[Path, Path]:
    """Return the (training, test) TSV files of a sentence data set: sst2's dev.tsv, or a folder's test/dev.tsv."""
    if cfg.dataset == "sst2":
        folder = data_root(cfg.root) / "sst2"
        tests = ("dev.tsv",)  # GLUE's test labels are not public: dev is the test split
    else:
        folder = Path(cfg.dataset.removeprefix("tsv:")).expanduser()
        tests = ("test.tsv", "dev.tsv")
    train = folder / "train.tsv"
    test = next((folder / t for t in tests if (folder / t).is_file()), folder / tests[-1])
    for path in (train, test):
        if not path.is_file():
            hint = (
                " (set KDKIT_DATA or data.root to the directory holding sst2/)"
                if cfg.dataset == "sst2"
                else ""
            )
            raise DataError(f"data.dataset {cfg.dataset}: {path} not found{hint}")
    return train, test


def read_text_splits(cfg: DataConfig) -> tuple[TextDataset, TextDataset, str]:
    """Return (training set, test set, where the test sentences come from) of a sentence data set, untokenised."""
    t = cfg.text or TextDataConfig()
    train_file, test_file = text_files(cfg)
    kw: dict[str, Any] = {"label_column": t.label_column, "text_column": t.text_column, "header": t.header}
    classes = SST2_CLASSES if cfg.dataset == "sst2" else None
    full = load_tsv_dataset(train_file, classes, name=f"{cfg.dataset}/train", **kw)
    test = load_tsv_dataset(test_file, full.classes, name=f"{cfg.dataset}/{test_file.stem}", **kw)
    return full, test, f"test sentences from {test_file}"


def text_tokenizer(cfg: DataConfig) -> Any:
    """Return the tokenizer data.text.tokenizer names (hf:PATH)."""
    t = cfg.text
    if t is None or t.tokenizer is None:
        raise DataError(f"data.dataset {cfg.dataset}: sentence data needs data.text.tokenizer (hf:PATH)")
    return load_tokenizer(t.tokenizer.removeprefix("hf:"))
