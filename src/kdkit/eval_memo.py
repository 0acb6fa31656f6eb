"""Remembered evaluations of loaded checkpoints: the same weights on the same samples are evaluated once.

A run that loads a teacher from a checkpoint evaluates it on the validation and test sets, in fp32. A sweep of
students from one teacher would repeat that evaluation in every run (a minute for an ImageNet CNN at 224 px on
a laptop CPU). The evaluation is deterministic, so its result is stored under a key made of everything it
depends on, and read back when the key matches:

    <root>/<key>.json     correct, total, loss, per-class counts and errors, confusion, top-5 (written atomically)

The key hashes the model's spec (architecture and options such as an input size), every tensor of its state
dict, every tensor of every batch of the evaluated loader, the number of classes, the task (its repr), the memory
format and the torch version. An unreadable or inconsistent file is ignored and written again.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdkit.batches import BatchLoader
from kdkit.checkpoint import atomic_write_text
from kdkit.tasks import EvalResult
from kdkit.teacher_cache import cache_home, hash_module, hash_tensor

FORMAT = "kdkit-eval-memo-1"


def default_memo_root() -> Path:
    """Return where remembered evaluations live: $KDKIT_CACHE/evaluations or ~/.cache/kdkit/evaluations."""
    return cache_home() / "evaluations"


def memo_key(
    model: nn.Module,
    spec: dict[str, Any],
    loader: BatchLoader,
    num_classes: int | None,
    task: str,
    channels_last: bool,
) -> str:
    """Return the hash naming one evaluation: model spec and weights, the loader's batches, classes, task."""
    h = hashlib.sha256(FORMAT.encode())
    h.update(json.dumps(spec, sort_keys=True, default=str).encode())
    h.update(json.dumps([num_classes, task, channels_last, torch.__version__]).encode())
    hash_module(h, model)
    for batch in loader:
        for name in sorted(batch):
            h.update(name.encode())
            hash_tensor(h, batch[name])
    return h.hexdigest()


def _as_doc(result: EvalResult) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "correct": result.correct,
        "total": result.total,
        "loss": result.loss,
        "class_counts": result.class_counts.tolist(),
        "class_errors": result.class_errors.tolist(),
        "confusion": result.confusion.tolist() if result.confusion is not None else None,
        "top5_correct": result.top5_correct,
    }


def _from_doc(doc: dict[str, Any]) -> EvalResult:
    if doc.get("format") != FORMAT:
        raise ValueError(f"format {doc.get('format')!r}, expected {FORMAT!r}")
    counts = torch.tensor(doc["class_counts"], dtype=torch.long)
    errors = torch.tensor(doc["class_errors"], dtype=torch.long)
    confusion = doc["confusion"]
    result = EvalResult(
        correct=int(doc["correct"]),
        total=int(doc["total"]),
        loss=float(doc["loss"]),
        class_counts=counts,
        class_errors=errors,
        confusion=torch.tensor(confusion, dtype=torch.long) if confusion is not None else None,
        top5_correct=None if doc["top5_correct"] is None else int(doc["top5_correct"]),
    )
    if (
        counts.shape != errors.shape
        or int(counts.sum()) != result.total
        or int(errors.sum()) != result.errors
    ):
        raise ValueError("per-class counts disagree with the totals")
    return result


def recall(root: Path, key: str) -> EvalResult | None:
    """Return the evaluation stored under `key`, or None when there is none (or it cannot be trusted)."""
    path = root / f"{key}.json"
    if not path.is_file():
        return None
    try:
        return _from_doc(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return None  # written again by the caller's `remember`


def remember(root: Path, key: str, result: EvalResult) -> None:
    """Store an evaluation under `key` (atomically: a reader never sees half a file)."""
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(root / f"{key}.json", json.dumps(_as_doc(result)))
