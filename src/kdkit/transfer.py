"""Transfer sets made from the training data: relabelled augmented copies, labeled + teacher-labelled images.

- `relabel_transfer_set`: every teacher of an ensemble labels the images and `relabel_copies` augmented
  copies of them (Fukuda et al. 2017, "multiple streams of teacher distributions via data augmentation");
- `unlabeled_transfer_set`: the labeled images plus the unlabeled ones the teacher is confident about, with
  the teacher's argmax as label (`hard`) or no label (`soft`: they learn from the teacher's outputs only)
  (Noisy Student, Xie et al. 2020).

Unlabeled images carry the label `UNLABELED` (-1) from the moment the data is loaded: with soft targets
their cross-entropy is masked out (`masked_cross_entropy`), with hard targets the label is the teacher's argmax.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdkit.config import EnsembleConfig, UnlabeledConfig
from kdkit.data.loader import Augment, apply_params, augment_draws
from kdkit.data.sources import ArrayDataset
from kdkit.data.splits import UNLABELED
from kdkit.ensemble import EnsembleTeacher
from kdkit.errors import ConfigError
from kdkit.losses import response
from kdkit.objective import Objective

# Logits of a model for uint8 images, in order, without augmentation (CPU fp32).
Predict = Callable[[nn.Module, Tensor], Tensor]


def masked_cross_entropy(logits: Tensor, labels: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Return the cross-entropy averaged over labeled samples only (labels < 0 are unlabeled; 0 if none).

    No host sync: a batch without any labeled sample contributes a zero loss.
    """
    valid = labels >= 0
    per = F.cross_entropy(
        logits.float(), labels.clamp_min(0), reduction="none", label_smoothing=label_smoothing
    )
    return (per * valid).sum() / valid.sum().clamp_min(1)


def mask_unlabeled(objective: Objective, field: str = "distill") -> Objective:
    """Make the objective's cross-entropy terms skip unlabeled samples; refuse other terms that read labels."""
    for i, term in enumerate(objective.terms):
        if "labels" not in term.inputs:
            continue
        if term.fn is response.cross_entropy:
            term.fn = masked_cross_entropy
        elif term.fn is not masked_cross_entropy:
            raise ConfigError(
                f"{field}: loss term {i} ({term.name!r}) reads labels, which unlabeled images do not have; "
                "use distill.unlabeled.targets: hard (teacher pseudo-labels) or remove the term"
            )
    return objective


def relabel_transfer_set(
    predict: Predict, ens: EnsembleTeacher, data: ArrayDataset, ecfg: EnsembleConfig, seed: int
) -> tuple[ArrayDataset, Tensor, dict[str, Any]]:
    """Return the relabelled transfer set: for every teacher, the images and `relabel_copies` augmented copies
    of them, each view labelled by that teacher's logits (Fukuda et al.'s "multiple streams of teacher
    distributions via data augmentation"). True labels are kept for the cross-entropy term.
    """
    aug = Augment(**ecfg.augment.model_dump())
    images = torch.as_tensor(data.images)
    n, k = len(images), ecfg.relabel_copies
    views: list[Tensor] = []
    logits: list[Tensor] = []
    for m, member in enumerate(ens.members):
        member_views = [images]
        if k:
            draws = augment_draws(n, k, aug, seed * 7919 + m)
            for c in range(k):
                chunks = [
                    apply_params(images[s : s + 4096], aug, draws[s : s + 4096, c]) for s in range(0, n, 4096)
                ]
                member_views.append(torch.cat(chunks))
        for v in member_views:
            views.append(v)
            logits.append(predict(member, v))
    out = ArrayDataset(
        torch.cat(views).numpy(),
        np.tile(data.labels, len(views)),
        list(data.classes),
        name=f"{data.name}:relabel{len(ens.members)}x{1 + k}",
    )
    info = {"relabel": {"copies": k, "teachers": len(ens.members), "views_per_image": len(views)}}
    return out, torch.cat(logits), info


# ------------------------------------------------------------------------------------------ unlabeled data


def label_unlabeled(logits: Tensor, u: UnlabeledConfig) -> tuple[Tensor, Tensor]:
    """Return (keep mask, labels) for unlabeled images from the teacher's logits.

    Images whose teacher confidence (max softmax probability) is below `threshold` are dropped; kept images get
    the teacher's argmax as label (`hard`) or `UNLABELED` (`soft`: they learn from the teacher's outputs only).
    """
    prob = torch.softmax(logits.float(), dim=-1)
    conf, arg = prob.max(dim=-1)
    keep = conf >= u.threshold
    labels = arg if u.targets == "hard" else torch.full_like(arg, UNLABELED)
    return keep, labels


def unlabeled_transfer_set(
    labeled: ArrayDataset, hidden: ArrayDataset, logits: Tensor, u: UnlabeledConfig
) -> tuple[ArrayDataset, Tensor, dict[str, Any]]:
    """Return labeled + teacher-labelled unlabeled images, their fixed teacher logits, and counts.

    `logits` are the teacher's outputs for labeled then unlabeled images. The hidden labels are never read.
    """
    n_lab = len(labeled)
    keep, pseudo = label_unlabeled(logits[n_lab:], u)
    idx = torch.nonzero(keep).flatten().numpy()
    images = np.concatenate([labeled.images, hidden.images[idx]])
    labels = np.concatenate([labeled.labels, pseudo[idx].numpy().astype(np.int64)])
    tlogits = torch.cat([logits[:n_lab], logits[n_lab:][keep]])
    out = ArrayDataset(images, labels, list(labeled.classes), name=f"{labeled.name}+unlabeled")
    info = {
        "labeled": n_lab,
        "unlabeled_total": len(hidden),
        "unlabeled_used": len(idx),
        "targets": u.targets,
        "threshold": u.threshold,
    }
    return out, tlogits, info
