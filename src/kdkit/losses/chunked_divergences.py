"""Dense token divergences computed chunk by chunk with their closed-form gradient (one pass over memory).

Autograd runs a divergence over (positions, V) logits as a dozen elementwise passes, each reading and writing
whole (N, V) tensors, and keeps several of them for backward: at V = 2048 and 4,096 positions a pass moves
33 MB, and on a CPU the loss then costs more than the two models' forward and backward together. Here the
forward pass walks the rows in chunks small enough to stay in the cache, computes each row's divergence and
its gradient with respect to the student's logits in closed form, and keeps only that gradient for backward.

With z = student logits / T, q = softmax(z) the student and p = softmax(teacher logits / T) the teacher, per
position (the constant parts of d/dq vanish through the softmax):
- forward KL(p || q):                 d/dz = q - p
- reverse KL(q || p):                 d/dz = q * (a - sum(q * a)),  a = log q - log p
- JSD(beta), m = beta p + (1 - beta) q: d/dz = q * (h - sum(q * h)),  h = (1 - beta) * (log q - log m)
- skew KL(p || m), m = alpha p + (1 - alpha) q (DistiLLM):  d/dz = q * (g - sum(q * g)),  g = -(1 - alpha) p / m
- skew reverse KL(q || m), m = alpha q + (1 - alpha) p:     d/dz = q * (g - sum(q * g)),
                                                            g = log q - log m - alpha q / m
- total variation 1/2 sum |p - q|:    d/dz = q * (g - sum(q * g)),  g = sign(q - p) / 2
(each g is d(loss)/dq up to a constant; q * (g - sum(q * g)) is the chain rule through the softmax).
The loss is T^2 * sum_i w_i l_i / max(sum_i w_i, 1) over positions i with weights w (scored positions), so row
i of the gradient with respect to the student logits is w_i * T / max(sum w, 1) * d/dz_i. Log-probabilities
are floored at LOG_FLOOR as in `token_divergences`, so values equal the autograd formulas there.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

LOG_FLOOR = -1.0e4
KINDS = ("forward_kl", "reverse_kl", "jsd", "skew_kl", "skew_reverse_kl", "total_variation")
MIXED = ("jsd", "skew_kl", "skew_reverse_kl")  # kinds with a mixture weight strictly inside (0, 1)
CHUNK_ELEMENTS = 1 << 18  # float32 elements per chunk and tensor (1 MB): rows = CHUNK_ELEMENTS // V


def _through_softmax(q: Tensor, g: Tensor) -> Tensor:
    """Return q * (g - sum(q * g)): d(loss)/dz from g = d(loss)/dq through q = softmax(z) (g is overwritten)."""
    return g.sub_((q * g).sum(dim=-1, keepdim=True)).mul_(q)


def _mixture(log_a: Tensor, log_b: Tensor, weight_a: float) -> Tensor:
    """Return log(weight_a * a + (1 - weight_a) * b), floored, for 0 < weight_a < 1."""
    return torch.logaddexp(log_a + math.log(weight_a), log_b + math.log1p(-weight_a)).clamp_min_(LOG_FLOOR)


def _skew_rows(kind: str, log_q: Tensor, log_p: Tensor, mix: float) -> tuple[Tensor, Tensor]:
    """Return (loss per row, gradient) of the skew KLs and total variation from floored log-probabilities."""
    q = log_q.exp()
    if kind == "total_variation":
        diff = q - log_p.exp()
        return 0.5 * diff.abs().sum(dim=-1), _through_softmax(q, diff.sign_().mul_(0.5))
    if kind == "skew_kl":
        h = log_p - _mixture(log_p, log_q, mix)  # skew KL: m = mix * p + (1 - mix) * q; h = log(p / m)
        loss = (log_p.exp() * h).sum(dim=-1)
        return loss, _through_softmax(q, h.exp_().mul_(-(1.0 - mix)))
    h = log_q - _mixture(log_q, log_p, mix)  # skew reverse KL: m = mix * q + (1 - mix) * p; h = log(q / m)
    loss = (q * h).sum(dim=-1)
    return loss, _through_softmax(q, h.sub_(h.exp().mul_(mix)))


def _rows(kind: str, zs: Tensor, zt: Tensor, beta: float) -> tuple[Tensor, Tensor]:
    """Return (divergence per row, its gradient with respect to zs) of float32 rows of softened logits; `beta`
    is the mixture weight of the kinds that mix (JSD's beta, the skew KLs' alpha)."""
    log_q = F.log_softmax(zs, dim=-1).clamp_min_(LOG_FLOOR)
    log_p = F.log_softmax(zt, dim=-1).clamp_min_(LOG_FLOOR)
    if kind in ("skew_kl", "skew_reverse_kl", "total_variation"):
        return _skew_rows(kind, log_q, log_p, beta)
    q = log_q.exp()
    if kind == "forward_kl":
        p = log_p.exp()
        loss = (p * (log_p - log_q)).sum(dim=-1)
        return loss, q.sub_(p)
    if kind == "reverse_kl":
        a = log_q.sub_(log_p)  # log q - log p (log_q is not needed again)
        loss = (q * a).sum(dim=-1)
        return loss, q.mul_(a.sub_(loss.unsqueeze(-1)))
    p = log_p.exp()
    log_m = torch.logaddexp(log_p + math.log(beta), log_q + math.log1p(-beta)).clamp_min_(LOG_FLOOR)
    kl_pm = (p * (log_p - log_m)).sum(dim=-1)
    h = log_q.sub_(log_m)  # log q - log m
    kl_qm = (q * h).sum(dim=-1)
    loss = beta * kl_pm + (1.0 - beta) * kl_qm
    return loss, q.mul_(h.sub_(kl_qm.unsqueeze(-1))).mul_(1.0 - beta)


def _sparse_forward_kl_rows(zs: Tensor, ids: Tensor, logprobs: Tensor, tail: Tensor) -> tuple[Tensor, Tensor]:
    """Return (forward KL per row, gradient) against top-k targets, over the k kept ids + one rest bucket.

    With P the teacher's categories (its top-k log-probabilities and its tail mass) and Q the student's (q at the
    kept ids, the sum of q over every other id): d/dz_v = q_v - P_v at a kept id, q_v * (1 - P_rest / Q_rest)
    elsewhere.
    """
    log_q = F.log_softmax(zs, dim=-1).clamp_min_(LOG_FLOOR)
    ids = ids.long()
    kept = log_q.gather(-1, ids)
    q = log_q.exp_()
    # The rest's mass summed over the other ids (no 1 - sum cancellation when the kept mass is near 1).
    rest = q.scatter(-1, ids, 0.0).sum(dim=-1).log().clamp_min(LOG_FLOOR)
    log_pk = logprobs.float().clamp_min(LOG_FLOOR)
    log_pr = tail.float().clamp_min(0.0).log().clamp_min(LOG_FLOOR)
    loss = (log_pk.exp() * (log_pk - kept)).sum(dim=-1) + log_pr.exp() * (log_pr - rest)
    grad = q.mul_((1.0 - (log_pr - rest).exp()).unsqueeze(-1))  # every id as if in the rest bucket
    return loss, grad.scatter_(-1, ids, kept.exp() - log_pk.exp())  # then the kept ids


class _Chunked(torch.autograd.Function):
    """Rows of student logits walked in chunks: each chunk's loss and gradient by `rows` (closed form)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        student: Tensor,
        weights: Tensor,
        temperature: float,
        rows: Callable[..., Any],
        *targets: Tensor,
    ) -> Tensor:
        v = student.shape[-1]
        s2 = student.reshape(-1, v)
        flat = [t.reshape(s2.shape[0], *t.shape[student.dim() - 1 :]) for t in targets]
        w = weights.reshape(-1).to(torch.float32)
        need_grad = bool(ctx.needs_input_grad[0])
        grad = torch.empty(s2.shape, dtype=student.dtype, device=student.device) if need_grad else None
        per = torch.empty(s2.shape[0], dtype=torch.float32, device=student.device)
        step = max(1, CHUNK_ELEMENTS // v)
        denom = w.sum().clamp_min(1.0)
        scale = w * (temperature / denom)  # d(total)/d(row loss) / T: the chain rule through z = logits / T
        with torch.autocast(device_type=student.device.type, enabled=False):
            for i in range(0, s2.shape[0], step):
                j = min(i + step, s2.shape[0])
                per[i:j], g = rows(s2[i:j].float() / temperature, *(t[i:j] for t in flat))
                if grad is not None:
                    grad[i:j] = g.mul_(scale[i:j, None])
            total = (per * w).sum() / denom * (temperature * temperature)
        ctx.save_for_backward(grad if grad is not None else torch.empty(0))
        ctx.shape, ctx.n_targets = student.shape, len(targets)
        return total

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        (grad,) = ctx.saved_tensors
        if not grad.numel():
            return (None, None, None, None, *([None] * ctx.n_targets))
        # The usual case, a loss term of weight 1, needs no pass over the (N, V) gradient.
        out = grad if bool(grad_output == 1) else grad * grad_output.to(grad.dtype)
        return (out.reshape(ctx.shape), None, None, None, *([None] * ctx.n_targets))


def chunked_divergence(
    kind: str, student: Tensor, teacher: Tensor, weights: Tensor, temperature: float, beta: float = 0.5
) -> Tensor:
    """Return T^2 * weighted mean over positions of a divergence between dense teacher and student logits.

    kind: one of KINDS; `beta` is the mixture weight of jsd (its beta) and of skew_kl and skew_reverse_kl (their
    alpha), strictly between 0 and 1; student and teacher (..., V); weights (...) per position (0: not scored).
    The teacher gets no gradient (it is a fixed target).
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if kind in MIXED and not 0.0 < beta < 1.0:
        raise ValueError(f"{kind} needs a mixture weight strictly between 0 and 1, got {beta}")
    if teacher.requires_grad:
        raise ValueError("chunked_divergence treats the teacher as a fixed target: detach its logits")

    def rows(zs: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        return _rows(kind, zs, t.float() / temperature, beta)

    return _Chunked.apply(student, weights, temperature, rows, teacher)


def chunked_sparse_forward_kl(
    student: Tensor, ids: Tensor, logprobs: Tensor, tail: Tensor, weights: Tensor, temperature: float
) -> Tensor:
    """Return T^2 * weighted mean over positions of the forward KL against top-k targets (k ids, their teacher
    log-probabilities at `temperature`, the teacher's tail mass), over the k kept ids and one rest bucket."""
    return _Chunked.apply(student, weights, temperature, _sparse_forward_kl_rows, ids, logprobs, tail)
