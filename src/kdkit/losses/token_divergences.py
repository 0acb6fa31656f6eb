"""Per-token divergences between a teacher's and a student's next-token distributions (causal-LM distillation).

Every function compares, at each scored position, the teacher distribution p and the student distribution q
over the vocabulary (last dimension), both softened by the temperature T (softmax(logits / T)), sums over the
vocabulary and averages over the scored positions. A position is scored when its label is not -100 (the ignore
index of `torch.nn.functional.cross_entropy`) and, when a `mask` is given, where the mask is nonzero. Like
Hinton's `kd`, every divergence is multiplied by T^2 (so T = 1, the default, is the plain divergence).

Shapes: student logits (..., V); teacher dense logits (..., V) or `SparseTargets` of (..., k); labels and mask
(...) (the leading dimensions of the logits). All arithmetic is float32.

Sparse targets (a teacher stored as its top-k tokens) are compared over k + 1 categories: the k kept tokens and
one "rest" bucket. The teacher's rest is its stored tail mass (1 - the mass of its top k); the student's rest is
the probability the student puts on every token outside the teacher's top-k ids (computed as a log-sum-exp over
those tokens, not as 1 - sum, so it is exact and has a gradient). Coarse-graining the tail into one bucket can
only lower an f-divergence (data processing inequality), so a sparse loss is a lower bound of the dense one,
equal to it when k = V (the tail is empty). The teacher's top-k log-probabilities are those of the temperature
the targets were made at (`SparseTargets.temperature`); the student is softened by `temperature`, and the two
must agree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from kdkit.losses.chunked_divergences import LOG_FLOOR, MIXED, chunked_divergence, chunked_sparse_forward_kl

IGNORE_INDEX = -100
# Log-probabilities are floored at LOG_FLOOR: exp(-1e4) is exactly 0 in float32, and every term stays finite (no
# inf - inf or 0 * inf, in the value or the gradient) when a bucket holds no mass (an empty tail at k = V).


@dataclass(frozen=True)
class SparseTargets:
    """A teacher's next-token distribution kept as its top-k tokens per position and the mass left over.

    ids (..., k) integer token ids; logprobs (..., k) the teacher's log-probabilities of those ids (any float
    dtype, read as float32); tail (...) the teacher's probability of every other token, 1 - sum(exp(logprobs))
    as computed in full precision when the targets were made; temperature the softening they were made at.
    """

    ids: Tensor
    logprobs: Tensor
    tail: Tensor
    temperature: float = 1.0

    def __post_init__(self) -> None:
        if self.ids.shape != self.logprobs.shape:
            raise ValueError(
                f"sparse targets: ids {tuple(self.ids.shape)} and logprobs {tuple(self.logprobs.shape)} differ"
            )
        if self.ids.is_floating_point():
            raise ValueError(f"sparse targets: ids must be integers, got {self.ids.dtype}")
        if tuple(self.tail.shape) != tuple(self.ids.shape[:-1]):
            raise ValueError(
                f"sparse targets: tail {tuple(self.tail.shape)} must have the positions' shape "
                f"{tuple(self.ids.shape[:-1])}"
            )

    @property
    def k(self) -> int:
        """Return the number of tokens kept per position."""
        return int(self.ids.shape[-1])

    @staticmethod
    def from_logits(logits: Tensor, k: int, temperature: float = 1.0) -> SparseTargets:
        """Return the top-k targets of dense teacher logits (float32, exact tail mass)."""
        logp = F.log_softmax(logits.float() / temperature, dim=-1)
        top, ids = logp.topk(k, dim=-1)
        return SparseTargets(ids, top, tail_mass(logp, ids), temperature)


def tail_mass(logprobs: Tensor, ids: Tensor) -> Tensor:
    """Return the probability of every token outside `ids` (..., k) under full log-probabilities (..., V).

    A log-sum-exp over the left-out tokens, not 1 - sum(top k): exact, and exactly 0 when k = V.
    """
    return logprobs.float().scatter(-1, ids.long(), -math.inf).logsumexp(dim=-1).exp()


def _check_temperature(temperature: float) -> None:
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def _scored(leading: torch.Size, labels: Tensor | None, mask: Tensor | None, device: torch.device) -> Tensor:
    """Return the float weights (1 scored, 0 not) of the positions."""
    w = torch.ones(leading, device=device)
    for name, t in (("labels", labels), ("mask", mask)):
        if t is None:
            continue
        if tuple(t.shape) != tuple(leading):
            raise ValueError(f"{name} {tuple(t.shape)} must have the positions' shape {tuple(leading)}")
    if labels is not None:
        w = w * (labels != IGNORE_INDEX).to(device)
    if mask is not None:
        w = w * (mask != 0).to(device)
    return w


def _check_dense(student_logits: Tensor, teacher: Tensor) -> None:
    if teacher.shape != student_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher.shape)} "
            "must have the same shape (..., vocabulary)"
        )


def _check_sparse(student_logits: Tensor, teacher: SparseTargets, temperature: float) -> None:
    if not math.isclose(teacher.temperature, temperature):
        raise ValueError(
            f"sparse targets were made at temperature {teacher.temperature}, the loss asks for {temperature}"
        )
    if tuple(teacher.ids.shape[:-1]) != tuple(student_logits.shape[:-1]):
        raise ValueError(
            f"sparse targets {tuple(teacher.ids.shape)} do not match student logits "
            f"{tuple(student_logits.shape)} (same positions expected)"
        )


def _pair(
    student_logits: Tensor, teacher: Tensor | SparseTargets, temperature: float
) -> tuple[Tensor, Tensor]:
    """Return (log p_teacher, log q_student) over the same categories: the vocabulary, or top-k + rest."""
    _check_temperature(temperature)
    log_q = F.log_softmax(student_logits.float() / temperature, dim=-1)
    if isinstance(teacher, SparseTargets):
        _check_sparse(student_logits, teacher, temperature)
        ids = teacher.ids.long()
        kept = log_q.gather(-1, ids)
        rest = log_q.scatter(-1, ids, LOG_FLOOR).logsumexp(dim=-1, keepdim=True)
        log_q = torch.cat([kept, rest], dim=-1)
        tail = teacher.tail.float().clamp_min(0.0).log().unsqueeze(-1)
        log_p = torch.cat([teacher.logprobs.float(), tail], dim=-1)
    else:
        _check_dense(student_logits, teacher)
        log_p = F.log_softmax(teacher.float() / temperature, dim=-1)
    return log_p.clamp_min(LOG_FLOOR), log_q.clamp_min(LOG_FLOOR)


def _chunked(
    kind: str,
    student_logits: Tensor,
    teacher: Tensor | SparseTargets,
    labels: Tensor | None,
    mask: Tensor | None,
    temperature: float,
    beta: float = 0.5,
) -> Tensor | None:
    """Return the divergence by `chunked_divergences` (dense targets that take no gradient; sparse targets
    under the forward KL), else None: the same values as the autograd formulas below, with the gradient in one
    pass (benchmarks/lm_loss_speed.py times both). `beta` is the mixture weight (JSD's beta, the skews' alpha)."""
    if kind in MIXED and not 0.0 < beta < 1.0:
        return (
            None  # a mixture at its end points: the exact formulas below (or the KL the caller delegates to)
        )
    if isinstance(teacher, SparseTargets):
        if kind != "forward_kl":
            return None
        _check_temperature(temperature)
        _check_sparse(student_logits, teacher, temperature)
        weights = _scored(student_logits.shape[:-1], labels, mask, student_logits.device)
        return chunked_sparse_forward_kl(
            student_logits, teacher.ids, teacher.logprobs, teacher.tail, weights, temperature
        )
    if teacher.requires_grad:
        return None
    _check_temperature(temperature)
    _check_dense(student_logits, teacher)
    weights = _scored(student_logits.shape[:-1], labels, mask, student_logits.device)
    return chunked_divergence(kind, student_logits, teacher, weights, temperature, beta)


def _kl(log_a: Tensor, log_b: Tensor) -> Tensor:
    """Return KL(a || b) per position, summed over the last dimension (inputs are floored log-probs)."""
    return (log_a.exp() * (log_a - log_b)).sum(dim=-1)


def _mix(log_a: Tensor, log_b: Tensor, weight_a: float) -> Tensor:
    """Return log(weight_a * a + (1 - weight_a) * b), floored, for 0 <= weight_a <= 1."""
    if weight_a <= 0.0:
        return log_b
    if weight_a >= 1.0:
        return log_a
    both = torch.stack([log_a + math.log(weight_a), log_b + math.log1p(-weight_a)])
    return both.logsumexp(dim=0).clamp_min(LOG_FLOOR)


def _mean(per_position: Tensor, weights: Tensor, temperature: float) -> Tensor:
    """Return the weighted mean over the scored positions times T^2 (0 when nothing is scored)."""
    total = (per_position * weights).sum()
    return total / weights.sum().clamp_min(1.0) * (temperature * temperature)


def _check_unit(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got {value}")


def forward_kl(
    student_logits: Tensor,
    teacher: Tensor | SparseTargets,
    labels: Tensor | None = None,
    temperature: float = 1.0,
    mask: Tensor | None = None,
) -> Tensor:
    """Return the forward KL, T^2 * mean over scored positions of KL(p || q) = sum_v p_v (log p_v - log q_v).

    Hinton et al. 2015 applied per token (the word-level KD of Kim & Rush 2016): mass-covering, the student
    pays for every token the teacher finds likely.
    """
    fast = _chunked("forward_kl", student_logits, teacher, labels, mask, temperature)
    if fast is not None:
        return fast
    log_p, log_q = _pair(student_logits, teacher, temperature)
    return _mean(_kl(log_p, log_q), _scored(log_p.shape[:-1], labels, mask, log_p.device), temperature)


def reverse_kl(
    student_logits: Tensor,
    teacher: Tensor | SparseTargets,
    labels: Tensor | None = None,
    temperature: float = 1.0,
    mask: Tensor | None = None,
) -> Tensor:
    """Return the reverse KL, T^2 * mean over scored positions of KL(q || p) = sum_v q_v (log q_v - log p_v).

    Mode-seeking (MiniLLM, Gu et al. 2024; GKD, Agarwal et al. 2024 with beta = 1): the student pays for mass it
    puts where the teacher puts little.
    """
    fast = _chunked("reverse_kl", student_logits, teacher, labels, mask, temperature)
    if fast is not None:
        return fast
    log_p, log_q = _pair(student_logits, teacher, temperature)
    return _mean(_kl(log_q, log_p), _scored(log_p.shape[:-1], labels, mask, log_p.device), temperature)


def generalized_jsd(
    student_logits: Tensor,
    teacher: Tensor | SparseTargets,
    labels: Tensor | None = None,
    temperature: float = 1.0,
    beta: float = 0.5,
    mask: Tensor | None = None,
) -> Tensor:
    """Return GKD's generalized Jensen-Shannon divergence JSD(beta) per token (Agarwal et al. 2024, eq. 3).

    With p the teacher, q the student and the mixture m = beta * p + (1 - beta) * q:
        JSD(beta)(p || q) = beta * KL(p || m) + (1 - beta) * KL(q || m).
    This is the convention of the paper and of TRL's GKDTrainer: beta -> 0 approaches the forward KL(p || q)
    (JSD(beta) / beta -> KL(p || q)) and beta -> 1 the reverse KL(q || p) (JSD / (1 - beta) -> KL(q || p)); like
    TRL, beta = 0 is defined as exactly the forward KL and beta = 1 exactly the reverse KL (the unscaled formula
    would be 0 there). beta = 0.5 is the symmetric JSD.
    """
    _check_unit("beta", beta)
    if beta == 0.0:
        return forward_kl(student_logits, teacher, labels, temperature, mask)
    if beta == 1.0:
        return reverse_kl(student_logits, teacher, labels, temperature, mask)
    fast = _chunked("jsd", student_logits, teacher, labels, mask, temperature, beta)
    if fast is not None:
        return fast
    log_p, log_q = _pair(student_logits, teacher, temperature)
    log_m = _mix(log_p, log_q, beta)
    jsd = beta * _kl(log_p, log_m) + (1.0 - beta) * _kl(log_q, log_m)
    return _mean(jsd, _scored(log_p.shape[:-1], labels, mask, log_p.device), temperature)


def skew_kl(
    student_logits: Tensor,
    teacher: Tensor | SparseTargets,
    labels: Tensor | None = None,
    temperature: float = 1.0,
    alpha: float = 0.1,
    mask: Tensor | None = None,
) -> Tensor:
    """Return DistiLLM's alpha-skew KL per token (Ko et al. 2024, eq. 4): KL(p || alpha * p + (1 - alpha) * q).

    p the teacher, q the student; alpha = 0 is the forward KL. DistiLLM's code computes the cross-entropy
    -sum p log m, which differs from this KL by the teacher's entropy (a constant: the same gradient); here the
    KL itself is returned, so a perfect student scores 0.
    """
    _check_unit("alpha", alpha)
    if alpha == 0.0:
        return forward_kl(student_logits, teacher, labels, temperature, mask)
    fast = _chunked("skew_kl", student_logits, teacher, labels, mask, temperature, alpha)
    if fast is not None:
        return fast
    log_p, log_q = _pair(student_logits, teacher, temperature)
    per = _kl(log_p, _mix(log_p, log_q, alpha))
    return _mean(per, _scored(log_p.shape[:-1], labels, mask, log_p.device), temperature)


def skew_reverse_kl(
    student_logits: Tensor,
    teacher: Tensor | SparseTargets,
    labels: Tensor | None = None,
    temperature: float = 1.0,
    alpha: float = 0.1,
    mask: Tensor | None = None,
) -> Tensor:
    """Return DistiLLM's alpha-skew reverse KL per token (Ko et al. 2024, eq. 5): KL(q || (1 - alpha) * p + alpha * q).

    p the teacher, q the student; alpha = 0 is the reverse KL.
    """
    _check_unit("alpha", alpha)
    if alpha == 0.0:
        return reverse_kl(student_logits, teacher, labels, temperature, mask)
    fast = _chunked("skew_reverse_kl", student_logits, teacher, labels, mask, temperature, alpha)
    if fast is not None:
        return fast
    log_p, log_q = _pair(student_logits, teacher, temperature)
    per = _kl(log_q, _mix(log_q, log_p, alpha))
    return _mean(per, _scored(log_p.shape[:-1], labels, mask, log_p.device), temperature)


def total_variation(
    student_logits: Tensor,
    teacher: Tensor | SparseTargets,
    labels: Tensor | None = None,
    temperature: float = 1.0,
    mask: Tensor | None = None,
) -> Tensor:
    """Return the total variation distance per token, TV(p, q) = 1/2 * sum_v |p_v - q_v|, in [0, 1].

    As a token-level distillation loss: Wen et al. 2023 (f-divergence minimization for sequence-level KD, TVD).
    """
    fast = _chunked("total_variation", student_logits, teacher, labels, mask, temperature)
    if fast is not None:
        return fast
    log_p, log_q = _pair(student_logits, teacher, temperature)
    per = 0.5 * (log_p.exp() - log_q.exp()).abs().sum(dim=-1)
    return _mean(per, _scored(log_p.shape[:-1], labels, mask, log_p.device), temperature)


def next_token_cross_entropy(logits: Tensor, labels: Tensor, mask: Tensor | None = None) -> Tensor:
    """Return the hard next-token cross-entropy -log q(label), averaged over the scored positions.

    Labels are already aligned with the logits (labels[t] is the token after input t); -100 and a zero mask
    are not scored. With no mask this equals the `ce` term on per-token labels.
    """
    if tuple(labels.shape) != tuple(logits.shape[:-1]):
        raise ValueError(
            f"labels {tuple(labels.shape)} must have the positions' shape {tuple(logits.shape[:-1])}"
        )
    w = _scored(labels.shape, labels, mask, logits.device)
    safe = labels.masked_fill(labels == IGNORE_INDEX, 0).long()
    nll = -F.log_softmax(logits.float(), dim=-1).gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    return _mean(nll, w, 1.0)
