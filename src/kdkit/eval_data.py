"""What `kdkit eval` evaluates a checkpoint on: the split of its data set, read as its model was trained.

Images at the recorded size and channel count with the recorded normalisation; sentences tokenised with the
recorded tokenizer; language-model text (a GPT checkpoint, `"task": "causal_lm"`) split by the recorded
data.lm settings and tokenised with the tokenizer saved beside the checkpoint, so its test split is the run's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kdkit import data as kdata
from kdkit.batches import BatchLoader
from kdkit.config import DataConfig, LMDataConfig
from kdkit.data.lm_sources import load_lm_splits
from kdkit.data.loader import InMemoryLoader
from kdkit.data.text import BucketLoader, tokenize
from kdkit.data.text_sources import read_text_splits, text_tokenizer
from kdkit.data.tokens import TokenLoader
from kdkit.errors import KdkitError
from kdkit.lm_io import TASK as CAUSAL_LM
from kdkit.lm_io import load_lm
from kdkit.tasks import IMAGE_CLASSIFICATION, TOKEN_CLASSIFICATION, ClassificationTask


def _images(
    dataset: str, split: str, root: str | None, meta: dict[str, Any], checkpoint: str
) -> kdata.ArrayDataset:
    """Return the split at the image size and channel count the checkpoint's model was trained on."""
    ds = kdata.load_dataset(dataset, split, root=root)
    size = meta.get("image_size")
    if isinstance(size, int) and ds.images.shape[2] != size:
        # Trained at another resolution (data.image_size): decode again at the recorded size.
        ds = kdata.load_dataset(dataset, split, root=root, image_size=size)
    channels = meta.get("in_channels")
    if isinstance(channels, int) and ds.images.shape[1] != channels:
        raise KdkitError(
            f"{checkpoint}: the model reads {channels}-channel images but {dataset} has {ds.images.shape[1]}"
        )
    return ds


def _sentences(
    dataset: str, split: str, root: str | None, meta: dict[str, Any], batch_size: int
) -> tuple[BucketLoader, list[str]]:
    """Return a loader over a sentence split tokenised as the checkpoint's model was trained (and the classes)."""
    if split not in ("train", "test"):
        raise KdkitError(f"{dataset} has the splits train and test, not {split!r}")
    cfg = DataConfig(dataset=dataset, root=root, text=meta["text"])
    full, test, _ = read_text_splits(cfg)
    assert cfg.text is not None
    ds = tokenize(full if split == "train" else test, text_tokenizer(cfg), cfg.text.max_length)
    return BucketLoader(ds, batch_size), ds.classes


def _lm_text(
    dataset: str, split: str, root: str | None, meta: dict[str, Any], checkpoint: str, batch_size: int
) -> tuple[TokenLoader, list[str]]:
    """Return a loader over a split of the language-model text the checkpoint was trained on (its tokenizer)."""
    if split not in ("train", "val", "test"):
        raise KdkitError(f"{dataset} has the splits train, val and test, not {split!r}")
    recorded = meta.get("lm")
    if not isinstance(recorded, dict):
        raise KdkitError(
            f"{checkpoint}: the checkpoint does not record its text (data.lm); it was not made by a run"
        )
    _, tokenizer, _ = load_lm(checkpoint)
    settings = {k: recorded[k] for k in LMDataConfig.model_fields if k in recorded}
    cfg = DataConfig(dataset=dataset, root=root, lm=settings)
    train, val, test, _, record = load_lm_splits(cfg, tokenizer=tokenizer)
    if dataset == meta.get("dataset") and record["tokens"] != recorded.get("tokens", record["tokens"]):
        raise KdkitError(
            f"{checkpoint}: {record['file']} is not the text the model was trained on (split token counts "
            f"{record['tokens']} against {recorded.get('tokens')})"
        )
    ds = {"train": train, "val": val, "test": test}[split]
    loader = TokenLoader(ds.input_ids, ds.attention_mask, ds.labels, batch_size, trim=False)
    return loader, ds.classes


def eval_loader(
    checkpoint: str | Path, meta: dict[str, Any], dataset: str, split: str, root: str | None, batch_size: int
) -> tuple[BatchLoader, list[str], ClassificationTask]:
    """Return (loader, classes, task) over the split `kdkit eval` evaluates the checkpoint's model on."""
    checkpoint = str(checkpoint)
    if meta.get("task") == CAUSAL_LM:
        loader, classes = _lm_text(dataset, split, root, meta, checkpoint, batch_size)
        return loader, classes, TOKEN_CLASSIFICATION
    if meta.get("text") is not None:
        loader, classes = _sentences(dataset, split, root, meta, batch_size)
        return loader, classes, TOKEN_CLASSIFICATION
    ds = _images(dataset, split, root, meta, checkpoint)
    norm = meta["normalize"]  # the training split's mean/std, recorded with the model
    loader = InMemoryLoader(ds.images, ds.labels, batch_size, mean=norm["mean"], std=norm["std"])
    return loader, ds.classes, IMAGE_CLASSIFICATION
