"""Tasks: what a batch is and what "correct" means.

A task names the batch tensors a model reads (`images`; `input_ids` and `attention_mask`) and scores its
outputs: accuracy during training (counted on the device, no host sync per step) and an exact evaluation
over a loader. Classification covers one label per sample, logits (N, C) with labels (N,), and one label
per token, logits (N, L, C) with labels (N, L), where label `ignore_index` (-100, as in Hugging Face and
`torch.nn.functional.cross_entropy`) marks a token that is not scored (padding, the prompt).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor, nn

from kdkit import distributed
from kdkit.batches import LABELS, BatchLoader

IGNORE_INDEX = -100
# A confusion matrix is kept up to this many classes (a language model's vocabulary gets none).
MAX_CONFUSION_CLASSES = 256


@dataclass
class EvalResult:
    """Accuracy of a model on one data set, with per-class counts (exact across ranks).

    For per-token tasks `total` counts scored tokens, and `loss` is the mean negative log-likelihood per token.
    """

    correct: int
    total: int
    loss: float
    class_counts: Tensor  # samples (tokens) per true class
    class_errors: Tensor  # misclassified samples (tokens) per true class
    confusion: Tensor | None = None  # (C, C) counts, row = true class, column = prediction (C <= 256)
    top5_correct: int | None = None  # true class among the 5 highest logits (more than 5 classes)

    @property
    def top5_accuracy(self) -> float | None:
        """Return the top-5 accuracy (None with 5 classes or fewer, where it is always 1)."""
        if self.top5_correct is None:
            return None
        return self.top5_correct / self.total if self.total else 0.0

    @property
    def accuracy(self) -> float:
        """Return correct / total (0 for an empty set)."""
        return self.correct / self.total if self.total else 0.0

    @property
    def errors(self) -> int:
        """Return the number of misclassified samples."""
        return self.total - self.correct

    @property
    def perplexity(self) -> float:
        """Return exp(mean negative log-likelihood): the perplexity of a language model (inf on overflow)."""
        try:
            return math.exp(self.loss)
        except OverflowError:
            return math.inf

    def errors_on(self, label: int) -> int:
        """Return the number of misclassified samples whose true label is `label`."""
        return int(self.class_errors[label]) if label < len(self.class_errors) else 0

    @property
    def errors_per_class(self) -> list[int]:
        """Return the misclassified count of every class."""
        return [int(v) for v in self.class_errors]


class Task(Protocol):
    """What the engine and the step providers ask of a task."""

    def inputs(self, batch: Mapping[str, Tensor], device: torch.device) -> tuple[Tensor, ...]:
        """Return the batch tensors a model is called with, on the device."""
        ...

    def accuracy_counts(self, logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Return (correct, counted) of a training step as device tensors."""
        ...

    def evaluate(
        self, model: nn.Module, loader: BatchLoader, num_classes: int | None, device: torch.device
    ) -> EvalResult:
        """Return the evaluation of a model over a loader, exact across data-parallel ranks."""
        ...


def _grown(t: Tensor, size: int) -> Tensor:
    """Return `t` (2, C) widened with zero columns to (2, size)."""
    if size <= t.shape[1]:
        return t
    return torch.cat([t, t.new_zeros(t.shape[0], size - t.shape[1])], dim=1)


@dataclass(frozen=True)
class ClassificationTask:
    """One class per sample (logits (N, C)) or per token (logits (N, L, C)); accuracy, loss, perplexity.

    `input_keys` are the batch tensors the model is called with, in order: ("images",) for image models,
    ("input_ids", "attention_mask") for token models.
    """

    input_keys: Sequence[str] = ("images",)
    label_key: str = LABELS
    ignore_index: int = IGNORE_INDEX

    def __post_init__(self) -> None:
        if isinstance(self.input_keys, str) or not self.input_keys:
            raise ValueError(
                f"input_keys must be a non-empty sequence of batch keys, got {self.input_keys!r}"
            )
        object.__setattr__(self, "input_keys", tuple(self.input_keys))

    def inputs(self, batch: Mapping[str, Tensor], device: torch.device) -> tuple[Tensor, ...]:
        """Return the batch tensors named by `input_keys`, on the device."""
        missing = [k for k in self.input_keys if k not in batch]
        if missing:
            raise KeyError(f"the task reads batch keys {missing}, but the batch holds {sorted(batch)}")
        return tuple(batch[k].to(device, non_blocking=True) for k in self.input_keys)

    def logits(
        self, model: Callable[..., Tensor], batch: Mapping[str, Tensor], device: torch.device
    ) -> Tensor:
        """Return the model's logits for a batch (the model is called on the task's inputs)."""
        return model(*self.inputs(batch, device))

    def accuracy_counts(self, logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Return (correct, counted) as device tensors: ignored and unlabeled samples (any label < 0, such as
        ignore_index and the -1 of unlabeled transfer samples) are neither correct nor counted."""
        if labels.is_floating_point():  # mixed targets (mixup/CutMix): the class with the larger share
            labels = labels.argmax(dim=-1)
        # argmax is never negative, so ignored and unlabeled samples cannot count as correct.
        correct = (logits.argmax(dim=-1) == labels).sum()
        return correct, (labels >= 0).sum()

    @torch.no_grad()
    def evaluate(
        self, model: nn.Module, loader: BatchLoader, num_classes: int | None, device: torch.device
    ) -> EvalResult:
        """Return accuracy, mean loss and per-class counts of a model over a loader, computed in fp32.

        Under data parallelism each rank evaluates its shard and the counts are summed: the result is exact.
        Without `num_classes` the class range is 0..max label seen (over all ranks).
        """
        was_training = model.training
        model.eval()
        sums = torch.zeros(4, dtype=torch.float64, device=device)  # correct, total, loss, top-5 correct
        per_class = torch.zeros(2, num_classes or 1, dtype=torch.float64, device=device)  # counts, errors
        with_confusion = num_classes is not None and num_classes <= MAX_CONFUSION_CLASSES
        confusion = torch.zeros(
            (num_classes or 0) ** 2 if with_confusion else 0, dtype=torch.float64, device=device
        )
        n_logits = 0
        dist = distributed.info()
        for batch in loader.shard(dist.rank, dist.world_size):
            logits = self.logits(model, batch, device).float()
            y = batch[self.label_key].to(device, non_blocking=True).reshape(-1)
            logits = logits.reshape(-1, logits.shape[-1])
            n_logits = logits.shape[-1]
            scored = y != self.ignore_index
            predicted = logits.argmax(dim=1)
            right = (predicted == y) & scored
            sums[0] += right.double().sum()
            sums[1] += scored.double().sum()
            sums[2] += torch.nn.functional.cross_entropy(
                logits, y, reduction="sum", ignore_index=self.ignore_index
            ).double()
            if n_logits > 5:
                top5 = (logits.topk(5, dim=1).indices == y[:, None]).any(dim=1) & scored
                sums[3] += top5.double().sum()
            if with_confusion:
                cells = y[scored] * num_classes + predicted[scored]
                confusion.index_add_(0, cells, torch.ones_like(cells, dtype=torch.float64))
            y, wrong = y[scored], (~right[scored]).double()
            if num_classes is None and len(y):
                per_class = _grown(per_class, int(y.max()) + 1)
            per_class[0].index_add_(0, y, torch.ones_like(wrong))
            per_class[1].index_add_(0, y, wrong)
        model.train(was_training)
        if num_classes is None and dist.enabled:
            # Ranks saw different labels: agree on the widest class range before summing.
            width = torch.zeros(dist.world_size, dtype=torch.float64, device=device)
            width[dist.rank] = per_class.shape[1]
            per_class = _grown(per_class, int(distributed.all_reduce_sum(width).max()))
        c = per_class.shape[1]
        counts = distributed.all_reduce_sum(torch.cat([sums, per_class.reshape(-1), confusion]))
        total = int(counts[1])
        return EvalResult(
            correct=int(counts[0]),
            total=total,
            loss=float(counts[2]) / max(total, 1),
            class_counts=counts[4 : 4 + c].long().cpu(),
            class_errors=counts[4 + c : 4 + 2 * c].long().cpu(),
            confusion=counts[4 + 2 * c :].long().cpu().view(c, c) if with_confusion else None,
            top5_correct=int(counts[3]) if n_logits > 5 else None,
        )


IMAGE_CLASSIFICATION = ClassificationTask(input_keys=("images",))
TOKEN_CLASSIFICATION = ClassificationTask(input_keys=("input_ids", "attention_mask"))
