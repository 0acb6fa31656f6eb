"""Contrastive representation distillation (Tian, Krishnan & Isola 2020): memory bank and NCE loss.

Restates HobbitLong/RepDistiller ``crd/criterion.py`` and ``crd/memory.py``. The loss module that ties
the parts together, ``CRDLoss``, lives in ``kdkit.losses.modules``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class Embed(nn.Module):
    """Linear projection of flattened features followed by L2 normalisation (RepDistiller ``Embed``)."""

    def __init__(self, dim_in: int, dim_out: int = 128) -> None:
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, x: Tensor) -> Tensor:
        """Return the unit-norm embeddings, shape (batch, dim_out), in fp32."""
        x = self.linear(x.reshape(x.shape[0], -1).float())
        # The reference divides by the norm without an eps; normalize's 1e-12 floor only matters at 0.
        return nn.functional.normalize(x, p=2, dim=1)


def contrast_loss(scores: Tensor, n_data: int, eps: float = 1e-7) -> Tensor:
    """Return the NCE loss of CRD eq. (18) for scores (batch, 1 + K) with the positive in column 0.

    RepDistiller ``ContrastLoss``: with the uniform noise probability Pn = 1 / n_data and m = K,
    loss = -(sum log(P_pos / (P_pos + m Pn + eps)) + sum log(m Pn / (P_neg + m Pn + eps))) / batch.
    """
    scores = scores.float().reshape(scores.shape[0], -1)
    if scores.shape[1] < 2:
        raise ValueError(f"contrast_loss needs (batch, 1 + K) scores with K >= 1, got {tuple(scores.shape)}")
    m = scores.shape[1] - 1
    mpn = m / float(n_data)
    p_pos = scores[:, 0]
    log_d1 = torch.log(p_pos / (p_pos + mpn + eps))
    p_neg = scores[:, 1:]
    log_d0 = torch.log(mpn / (p_neg + mpn + eps))
    return -(log_d1.sum() + log_d0.sum()) / scores.shape[0]


class ContrastLoss(nn.Module):
    """The NCE loss of CRD as a module holding n_data (RepDistiller ``ContrastLoss``)."""

    def __init__(self, n_data: int) -> None:
        super().__init__()
        self.n_data = n_data

    def forward(self, scores: Tensor) -> Tensor:
        """Return ``contrast_loss(scores, n_data)``."""
        return contrast_loss(scores, self.n_data)


class ContrastMemory(nn.Module):
    """Momentum memory bank of student and teacher embeddings for every training sample (CRD).

    RepDistiller ``ContrastMemory``: ``memory_student`` is its ``memory_v1``, ``memory_teacher`` its
    ``memory_v2``, and ``z_student`` / ``z_teacher`` its normalisation constants Z_v1 / Z_v2 (params[2:4]),
    fixed from the first batch as mean(exp(score / T)) * n_data. All four are registered buffers, so
    they are saved and restored with the run.

    Deliberate deviations: negatives are drawn uniformly with ``torch.randint`` (with replacement, the
    positive may be drawn as a negative), which is what the reference's AliasMethod does with its uniform
    unigram table; the memory is only updated in training mode, so that evaluating the loss on held-out
    data cannot overwrite training-set entries; no message is printed when Z is set.
    """

    def __init__(
        self, feat_dim: int, n_data: int, nce_k: int = 16384, nce_t: float = 0.07, nce_m: float = 0.5
    ) -> None:
        super().__init__()
        if n_data < 1 or nce_k < 1 or feat_dim < 1:
            raise ValueError(f"feat_dim, n_data and nce_k must be >= 1, got {feat_dim}, {n_data}, {nce_k}")
        if nce_t <= 0 or not 0.0 <= nce_m < 1.0:
            raise ValueError(f"need nce_t > 0 and 0 <= nce_m < 1, got {nce_t} and {nce_m}")
        self.feat_dim = feat_dim
        self.n_data = n_data
        self.nce_k = nce_k
        self.nce_t = nce_t
        self.nce_m = nce_m
        # Uniform in [-stdv, stdv] with stdv = 1/sqrt(dim/3): unit expected norm, as in the reference.
        stdv = 1.0 / math.sqrt(feat_dim / 3)
        self.register_buffer("memory_student", torch.rand(n_data, feat_dim).mul_(2 * stdv).add_(-stdv))
        self.register_buffer("memory_teacher", torch.rand(n_data, feat_dim).mul_(2 * stdv).add_(-stdv))
        # Negative = not yet set (the reference's -1 in params).
        self.register_buffer("z_student", torch.tensor(-1.0))
        self.register_buffer("z_teacher", torch.tensor(-1.0))

    def sample(self, idx: Tensor) -> Tensor:
        """Return (batch, 1 + nce_k) memory indices: idx in column 0, uniform random negatives after it."""
        out = torch.randint(0, self.n_data, (idx.shape[0], self.nce_k + 1), device=self.memory_student.device)
        out[:, 0] = idx
        return out

    def forward(
        self, v_s: Tensor, v_t: Tensor, idx: Tensor, contrast_idx: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Return (out_s, out_t): exp(<memory, anchor> / T) / Z, shape (batch, 1 + K), positive first.

        out_s anchors the student embedding against teacher memory entries and out_t the teacher
        embedding against student memory entries. contrast_idx, if given, must hold the positive index
        in column 0 followed by K negatives (RepDistiller's dataset ``sample_idx``).
        """
        batch = v_s.shape[0]
        if v_s.shape != (batch, self.feat_dim) or v_t.shape != (batch, self.feat_dim):
            raise ValueError(
                f"ContrastMemory needs embeddings of shape (batch, {self.feat_dim}); got student "
                f"{tuple(v_s.shape)} and teacher {tuple(v_t.shape)}"
            )
        if idx.shape != (batch,) or idx.is_floating_point():
            raise ValueError(
                f"idx must hold {batch} integer dataset indices, got {idx.dtype} {tuple(idx.shape)}"
            )
        idx = idx.long().to(self.memory_student.device)
        if contrast_idx is None:
            contrast_idx = self.sample(idx)
        elif contrast_idx.dim() != 2 or contrast_idx.shape[0] != batch or contrast_idx.shape[1] < 2:
            raise ValueError(
                f"contrast_idx must have shape (batch={batch}, 1 + K) with the positive first, got "
                f"{tuple(contrast_idx.shape)}"
            )
        contrast_idx = contrast_idx.long().to(self.memory_student.device)
        v_s = v_s.float()
        v_t = v_t.float()
        out_s = torch.exp(self._scores(self.memory_teacher, v_s, contrast_idx) / self.nce_t)
        out_t = torch.exp(self._scores(self.memory_student, v_t, contrast_idx) / self.nce_t)

        with torch.no_grad():
            # Set Z from the first batch without a host sync: keep the stored value once it is >= 0.
            self.z_student.copy_(torch.where(self.z_student < 0, out_s.mean() * self.n_data, self.z_student))
            self.z_teacher.copy_(torch.where(self.z_teacher < 0, out_t.mean() * self.n_data, self.z_teacher))
        # Clones, so that a later in-place update of the buffers cannot invalidate this step's graph.
        out_s = out_s / self.z_student.clone()
        out_t = out_t / self.z_teacher.clone()

        if self.training:
            with torch.no_grad():
                self._update(self.memory_student, idx, v_s)
                self._update(self.memory_teacher, idx, v_t)
        return out_s, out_t

    @staticmethod
    def _scores(memory: Tensor, v: Tensor, contrast_idx: Tensor) -> Tensor:
        """Return <memory[contrast_idx], v>, shape (batch, 1 + K), in fp32; memory rows are constants."""
        with torch.autocast(v.device.type, enabled=False):
            if memory.shape[0] <= 16 * contrast_idx.shape[1]:
                # One GEMM against the whole bank, then the sampled columns: the same numbers as gathering
                # (batch, 1 + K, dim) rows first (1 GB at batch 128, K = 16384), at a small fraction of the time.
                # The copy keeps this step's rows for the backward pass: the bank is updated in place below.
                return (v @ memory.clone().t()).gather(1, contrast_idx)
            return torch.bmm(memory[contrast_idx], v.unsqueeze(2)).squeeze(2)

    def _update(self, memory: Tensor, idx: Tensor, v: Tensor) -> None:
        # m * old + (1 - m) * new, renormalised to unit length, written back at the positives' rows.
        pos = memory.index_select(0, idx) * self.nce_m + v * (1.0 - self.nce_m)
        memory.index_copy_(0, idx, pos / pos.pow(2).sum(1, keepdim=True).pow(0.5))
