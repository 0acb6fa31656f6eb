"""Response-based distillation losses: they compare the networks' outputs (logits) only."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _check_pair(student_logits: Tensor, teacher_logits: Tensor) -> None:
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} must have the same shape (batch, classes)"
        )


def kd(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 4.0) -> Tensor:
    """Return T^2 * KL(softmax(teacher/T) || softmax(student/T)), averaged over the batch.

    Hinton, Vinyals & Dean (2015), section 2: the T^2 factor keeps the gradient magnitude of the soft
    term roughly independent of T, so that alpha/beta weights mean the same at every temperature.
    """
    _check_pair(student_logits, teacher_logits)
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if not teacher_logits.requires_grad and student_logits.dim() == 2:
        # The usual case (a frozen or cached teacher): one autograd node with its gradient made in the forward.
        return _KD.apply(student_logits, teacher_logits, float(temperature))
    # Both sides as log-probabilities in fp32: KLDivLoss fed probabilities is a classic silent bug,
    # and bf16 log-softmax loses the small soft-target differences distillation lives on.
    log_p_student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return kl * (temperature**2)


class _KD(torch.autograd.Function):
    """`kd` for a teacher that takes no gradient, with its gradient written out: T (p_student - p_teacher) / N.

    The same value and gradient as the composed version in `kd` (log-softmax, KL and scaling: about ten
    autograd nodes forward and back) in a few operations; on a 3 ms MLP step such small operations are a
    measurable share of what distillation adds to training the student alone (benchmarks/speed.py, (d)
    against (a)).
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, s: Tensor, t: Tensor, temperature: float) -> Tensor:
        log_ps = F.log_softmax(s.float() / temperature, dim=-1)
        log_pt = F.log_softmax(t.float() / temperature, dim=-1)
        pt = log_pt.exp()
        n = s.shape[0]
        ctx.save_for_backward(log_ps, pt)
        ctx.scale, ctx.dtype = temperature / n, s.dtype  # type: ignore[attr-defined]
        return (pt * (log_pt - log_ps)).sum() * (temperature * temperature / n)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> tuple[Tensor, None, None]:
        log_ps, pt = ctx.saved_tensors  # type: ignore[attr-defined]
        g = (log_ps.exp() - pt).mul_(grad * ctx.scale)  # type: ignore[attr-defined]
        return g.to(ctx.dtype), None, None  # type: ignore[attr-defined]


def soft_target_kd(student_logits: Tensor, teacher_probs: Tensor, temperature: float = 4.0) -> Tensor:
    """Return T^2 * KL(teacher_probs || softmax(student/T)) for teachers given as probabilities (ensembles)."""
    _check_pair(student_logits, teacher_probs)
    log_p_student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    p = teacher_probs.float()
    # xlogy gives 0 * log 0 = 0 for classes a teacher rules out completely.
    kl = (torch.xlogy(p, p) - p * log_p_student).sum(dim=-1).mean()
    return kl * (temperature**2)


def logit_mse(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """Return the mean squared difference of logits (Ba & Caruana 2014), averaged over batch and classes."""
    _check_pair(student_logits, teacher_logits)
    return F.mse_loss(student_logits.float(), teacher_logits.float())


def kd_mse_mix(
    student_logits: Tensor, teacher_logits: Tensor, temperature: float = 4.0, mix: float = 0.5
) -> Tensor:
    """Return mix * kd + (1 - mix) * logit_mse: the interpolation between soft targets and logit matching.

    mix=1 is Hinton's soft-target loss, mix=0 is Caruana's logit regression used by Tang et al. (2019).
    """
    if not 0.0 <= mix <= 1.0:
        raise ValueError(f"mix must lie in [0, 1], got {mix}")
    out = student_logits.new_zeros((), dtype=torch.float32)
    if mix > 0:
        out = out + mix * kd(student_logits, teacher_logits, temperature)
    if mix < 1:
        out = out + (1.0 - mix) * logit_mse(student_logits, teacher_logits)
    return out


def cross_entropy(logits: Tensor, labels: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Return the hard-label cross-entropy averaged over the batch, computed in fp32.

    Per-token logits (N, L, C) with labels (N, L) are averaged over the tokens whose label is not -100.
    """
    if logits.ndim == 3 and labels.ndim == 2:
        logits, labels = logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)
    return F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing)
