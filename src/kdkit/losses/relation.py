"""Relation and embedding losses (they compare how samples of a batch relate), decoupled KD and DIST.

Each function restates a published reference implementation (HobbitLong/RepDistiller ``distiller_zoo``,
megvii-research/mdistiller ``DKD.py``, hunto/DIST_KD); docstrings name it and any deliberate deviation. The math runs in
fp32 whatever the input dtype. Embedding inputs of shape (batch, ...) are flattened to (batch, -1).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor


def _flat_pair(name: str, student: Tensor, teacher: Tensor) -> tuple[Tensor, Tensor]:
    if student.dim() < 2 or teacher.dim() < 2 or student.shape[0] != teacher.shape[0]:
        raise ValueError(
            f"{name} needs (batch, ...) tensors with the same batch size; got student "
            f"{tuple(student.shape)} and teacher {tuple(teacher.shape)}"
        )
    return student.float().reshape(student.shape[0], -1), teacher.float().reshape(teacher.shape[0], -1)


# --------------------------------------------------------------------------------------------------------
# Decoupled KD (Zhao et al. 2022), megvii-research/mdistiller ``dkd_loss``.


def _check_logits(student_logits: Tensor, teacher_logits: Tensor, target: Tensor) -> None:
    if student_logits.dim() != 2 or student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"dkd needs student and teacher logits of the same shape (batch, classes); got "
            f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}"
        )
    if target.dim() != 1 or target.shape[0] != student_logits.shape[0] or target.is_floating_point():
        raise ValueError(
            f"dkd needs integer class labels of shape ({student_logits.shape[0]},); got "
            f"{target.dtype} {tuple(target.shape)}"
        )


def dkd_parts(
    student_logits: Tensor, teacher_logits: Tensor, target: Tensor, temperature: float = 4.0
) -> tuple[Tensor, Tensor]:
    """Return (TCKD, NCKD), each already multiplied by T^2 and averaged over the batch (mdistiller form).

    TCKD is the KL between the binary distributions (p_gt, 1 - p_gt) of teacher and student; NCKD is the
    KL between the distributions over the non-target classes, obtained, as in mdistiller, by
    subtracting 1000 from the target logit (after dividing by T) before the softmax.
    """
    _check_logits(student_logits, teacher_logits, target)
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    s = student_logits.float() / temperature
    t = teacher_logits.float() / temperature
    gt_mask = torch.zeros_like(s).scatter_(1, target.long().unsqueeze(1), 1.0)
    other_mask = 1.0 - gt_mask
    batch = target.shape[0]

    def binary(p: Tensor) -> Tensor:
        # cat_mask: (probability of the target class, total probability of all other classes).
        return torch.cat([(p * gt_mask).sum(1, keepdim=True), (p * other_mask).sum(1, keepdim=True)], dim=1)

    # mdistiller takes log() of the summed probabilities (no eps), and KL with reduction "sum" / batch.
    log_b_student = torch.log(binary(F.softmax(s, dim=1)))
    b_teacher = binary(F.softmax(t, dim=1))
    tckd = F.kl_div(log_b_student, b_teacher, reduction="sum") * temperature**2 / batch

    p_teacher_nt = F.softmax(t - 1000.0 * gt_mask, dim=1)
    log_p_student_nt = F.log_softmax(s - 1000.0 * gt_mask, dim=1)
    nckd = F.kl_div(log_p_student_nt, p_teacher_nt, reduction="sum") * temperature**2 / batch
    return tckd, nckd


def dkd(
    student_logits: Tensor,
    teacher_logits: Tensor,
    target: Tensor,
    alpha: float = 1.0,
    beta: float = 8.0,
    temperature: float = 4.0,
) -> Tensor:
    """Return alpha * TCKD + beta * NCKD, each T^2-scaled and batch-averaged (mdistiller ``dkd_loss``).

    The warm-up factor mdistiller multiplies in (min(epoch / warmup, 1)) is left to the caller; see
    ``dkd_warmup``. With alpha = beta = 1 this is not plain KD: KD = TCKD + (1 - p_gt^teacher) * NCKD.
    """
    tckd, nckd = dkd_parts(student_logits, teacher_logits, target, temperature)
    return alpha * tckd + beta * nckd


def dkd_warmup(epoch: float, warmup_epochs: float = 20) -> float:
    """Return the DKD loss weight min(epoch / warmup_epochs, 1) (mdistiller counts epochs from 1).

    warmup_epochs = 0 means no warm-up (weight 1).
    """
    if epoch < 0 or warmup_epochs < 0:
        raise ValueError(f"epoch and warmup_epochs must be >= 0, got {epoch} and {warmup_epochs}")
    if warmup_epochs == 0:
        return 1.0
    return min(epoch / warmup_epochs, 1.0)


# --------------------------------------------------------------------------------------------------------
# DIST (Huang et al. 2022, "Knowledge Distillation from A Stronger Teacher"): correlations of predictions.


def _pearson_distance(a: Tensor, b: Tensor, eps: float = 1e-8) -> Tensor:
    """Return 1 - the Pearson correlation of matching rows of a and b, averaged over the rows.

    The correlation is the cosine of the centred rows with `eps` added to the product of their norms (the
    reference's form), so a constant row correlates 0 with anything instead of dividing by zero.
    """
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    corr = (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + eps)
    return 1.0 - corr.mean()


def dist_parts(
    student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0
) -> tuple[Tensor, Tensor]:
    """Return DIST's (inter-class, intra-class) relation losses, each T^2-scaled.

    On the softmax predictions at temperature T: the inter-class loss is 1 - the Pearson correlation of
    each sample's student and teacher class scores, averaged over the batch; the intra-class loss is the
    same for each class's scores across the batch, averaged over the classes. Matching correlations
    rather than the probabilities themselves (as KL does) leaves the student free in scale and shift,
    which the paper found to help when the teacher is much stronger than the student.
    """
    if student_logits.dim() != 2 or student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"dist needs student and teacher logits of the same shape (batch, classes); got "
            f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}"
        )
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    p_s = F.softmax(student_logits.float() / temperature, dim=1)
    p_t = F.softmax(teacher_logits.float() / temperature, dim=1)
    t2 = temperature**2
    return t2 * _pearson_distance(p_s, p_t), t2 * _pearson_distance(p_s.t(), p_t.t())


def dist(
    student_logits: Tensor,
    teacher_logits: Tensor,
    beta: float = 1.0,
    gamma: float = 1.0,
    temperature: float = 1.0,
) -> Tensor:
    """Return beta * inter-class + gamma * intra-class relation loss of DIST (see ``dist_parts``).

    The defaults are the reference implementation's (beta = gamma = 1, T = 1). The intra-class term needs
    more than one sample per batch (with one it is a constant, without gradient).
    """
    inter, intra = dist_parts(student_logits, teacher_logits, temperature)
    return beta * inter + gamma * intra


# --------------------------------------------------------------------------------------------------------
# Relations between the samples of a batch.


def similarity_preserving(student_feat: Tensor, teacher_feat: Tensor) -> Tensor:
    """Return ||G_s - G_t||_F^2 / B^2 for the row-L2-normalised batch Gram matrices G = f f^T.

    Tung & Mori (2019), RepDistiller ``Similarity.similarity_loss``; features of any shape (B, ...) are
    flattened per sample, so student and teacher may differ in everything but the batch size. The
    reference returns a 1-element tensor; this returns a scalar. The teacher is not detached.
    """
    s, t = _flat_pair("similarity_preserving", student_feat, teacher_feat)
    g_s = F.normalize(s @ s.t())
    g_t = F.normalize(t @ t.t())
    batch = s.shape[0]
    return (g_t - g_s).pow(2).sum() / (batch * batch)


def _unit_rows_pkt(x: Tensor, eps: float) -> Tensor:
    # x / (||x|| + eps), with NaN (only from NaN inputs) set to 0 as in the reference.
    x = x / (x.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)
    return torch.where(torch.isnan(x), torch.zeros_like(x), x)


def pkt(student_emb: Tensor, teacher_emb: Tensor, eps: float = 1e-7) -> Tensor:
    """Return the probabilistic-knowledge-transfer loss mean(q * log((q + eps) / (p + eps))) over B x B.

    Passalis & Tefas (2018), RepDistiller ``PKT.cosine_similarity_loss``: cosine similarities mapped to
    [0, 1] by (c + 1) / 2, each row divided by its sum into a conditional distribution (p student, q
    teacher), and the KL written with eps inside the log and averaged over all B^2 entries (not summed
    per row). The teacher is not detached, as in the reference.
    """
    s, t = _flat_pair("pkt", student_emb, teacher_emb)
    s = _unit_rows_pkt(s, eps)
    t = _unit_rows_pkt(t, eps)
    p = (s @ s.t() + 1.0) / 2.0
    q = (t @ t.t() + 1.0) / 2.0
    p = p / p.sum(dim=1, keepdim=True)
    q = q / q.sum(dim=1, keepdim=True)
    return torch.mean(q * torch.log((q + eps) / (p + eps)))


def _pdist(e: Tensor, eps: float = 1e-12) -> Tensor:
    # Euclidean distances from the Gram identity, clamped at eps before the sqrt (so the gradient stays
    # finite for coincident points) and with a zero diagonal: RepDistiller ``RKDLoss.pdist``.
    sq = e.pow(2).sum(dim=1)
    d = (sq.unsqueeze(1) + sq.unsqueeze(0) - 2 * e @ e.t()).clamp(min=eps).sqrt()
    return d * (1.0 - torch.eye(e.shape[0], dtype=d.dtype, device=d.device))


def _rkd_angles(e: Tensor) -> Tensor:
    # cos of the angle at vertex i between j and k: <e_j - e_i, e_k - e_i> normalised, all (i, j, k).
    diff = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), p=2, dim=2)
    return torch.bmm(diff, diff.transpose(1, 2)).reshape(-1)


def rkd(
    student_emb: Tensor, teacher_emb: Tensor, distance_weight: float = 25.0, angle_weight: float = 50.0
) -> Tensor:
    """Return distance_weight * smooth_l1(distance relations) + angle_weight * smooth_l1(angle relations).

    Park et al. (2019), RepDistiller ``RKDLoss``: pairwise distances divided by the mean of the positive
    ones, and cosines of all triplet angles, compared with smooth-L1 (beta 1, mean). The teacher side
    is computed under no_grad, as in the reference.
    """
    s, t = _flat_pair("rkd", student_emb, teacher_emb)
    if s.shape[0] < 2:
        raise ValueError("rkd needs a batch of at least 2 samples (it compares pairs of samples)")
    with torch.no_grad():
        t_d = _pdist(t)
        t_d = t_d / t_d[t_d > 0].mean()
        t_angle = _rkd_angles(t)
    d = _pdist(s)
    d = d / d[d > 0].mean()
    loss_d = F.smooth_l1_loss(d, t_d)
    loss_a = F.smooth_l1_loss(_rkd_angles(s), t_angle)
    return distance_weight * loss_d + angle_weight * loss_a


def correlation_congruence(
    student_emb: Tensor,
    teacher_emb: Tensor,
    kernel: Literal["repdistiller", "gaussian"] = "repdistiller",
    gamma: float = 0.4,
    order: int = 2,
) -> Tensor:
    """Return the correlation-congruence loss; by default RepDistiller's ``Correlation`` definition.

    kernel="repdistiller" (the code the CC authors sent to RepDistiller): with delta = |s - t|,
    loss = mean over i of sum_d delta[i, d] * delta[i + 1, d], i.e. it couples consecutive samples of
    the batch; it needs equal embedding shapes (RepDistiller embeds both sides to feat_dim first).
    kernel="gaussian" is the paper's form (Peng et al. 2019, eq. 7-8): rows L2-normalised, correlation
    C = sum_{p=0..order} exp(-2 gamma) (2 gamma)^p / p! (f f^T)^p (Taylor-expanded Gaussian RBF) and
    loss = mean((C_s - C_t)^2); this is the common re-implementation (e.g. Knowledge-Distillation-Zoo,
    gamma 0.4, order 2) and only needs equal batch sizes. The teacher is not detached in either.
    """
    s, t = _flat_pair("correlation_congruence", student_emb, teacher_emb)
    if kernel == "repdistiller":
        if s.shape != t.shape:
            raise ValueError(
                f"correlation_congruence (repdistiller) needs equal embedding shapes, got student "
                f"{tuple(student_emb.shape)} and teacher {tuple(teacher_emb.shape)}; embed both sides "
                f"to the same dimension first (RepDistiller uses a linear embedding per side)"
            )
        if s.shape[0] < 2:
            raise ValueError("correlation_congruence needs a batch of at least 2 samples")
        delta = (s - t).abs()
        return (delta[:-1] * delta[1:]).sum(1).mean()
    if kernel == "gaussian":
        if order < 0:
            raise ValueError(f"order must be >= 0, got {order}")
        return F.mse_loss(_cc_gaussian(s, gamma, order), _cc_gaussian(t, gamma, order))
    raise ValueError(f"kernel must be 'repdistiller' or 'gaussian', got {kernel!r}")


def _cc_gaussian(f: Tensor, gamma: float, order: int) -> Tensor:
    f = F.normalize(f, p=2, dim=1)
    sim = f @ f.t()
    corr = torch.zeros_like(sim)
    for p in range(order + 1):
        corr = corr + math.exp(-2 * gamma) * (2 * gamma) ** p / math.factorial(p) * sim.pow(p)
    return corr
