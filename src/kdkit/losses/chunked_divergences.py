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
The loss is T^2 * sum_i w_i l_i / max(sum_i w_i, 1) over positions i with weights w (scored positions), so row
i of the gradient with respect to the student logits is w_i * T / max(sum w, 1) * d/dz_i. Log-probabilities
are floored at LOG_FLOOR as in `token_divergences`, so values equal the autograd formulas there.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

LOG_FLOOR = -1.0e4
KINDS = ("forward_kl", "reverse_kl", "jsd")
CHUNK_ELEMENTS = 1 << 18  # float32 elements per chunk and tensor (1 MB): rows = CHUNK_ELEMENTS // V


def _rows(kind: str, zs: Tensor, zt: Tensor, beta: float) -> tuple[Tensor, Tensor]:
    """Return (divergence per row, its gradient with respect to zs) of float32 rows of softened logits."""
    log_q = F.log_softmax(zs, dim=-1).clamp_min_(LOG_FLOOR)
    log_p = F.log_softmax(zt, dim=-1).clamp_min_(LOG_FLOOR)
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


class _ChunkedDivergence(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        student: Tensor,
        teacher: Tensor,
        weights: Tensor,
        kind: str,
        beta: float,
        temperature: float,
    ) -> Tensor:
        v = student.shape[-1]
        s2, t2 = student.reshape(-1, v), teacher.reshape(-1, v)
        w = weights.reshape(-1).to(torch.float32)
        need_grad = bool(ctx.needs_input_grad[0])
        grad = torch.empty(s2.shape, dtype=student.dtype, device=student.device) if need_grad else None
        per = torch.empty(s2.shape[0], dtype=torch.float32, device=student.device)
        step = max(1, CHUNK_ELEMENTS // v)
        with torch.autocast(device_type=student.device.type, enabled=False):
            for i in range(0, s2.shape[0], step):
                j = min(i + step, s2.shape[0])
                zs = s2[i:j].float() / temperature
                zt = t2[i:j].float() / temperature
                per[i:j], g = _rows(kind, zs, zt, beta)
                if grad is not None:
                    grad[i:j] = g.mul_(w[i:j, None])
            denom = w.sum().clamp_min(1.0)
            total = (per * w).sum() / denom * (temperature * temperature)
            if grad is not None:
                grad.mul_((temperature / denom).to(grad.dtype))
        ctx.save_for_backward(grad if grad is not None else torch.empty(0))
        ctx.shape = student.shape
        return total

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        (grad,) = ctx.saved_tensors
        out = (grad * grad_output.to(grad.dtype)).reshape(ctx.shape) if grad.numel() else None
        return out, None, None, None, None, None


def chunked_divergence(
    kind: str, student: Tensor, teacher: Tensor, weights: Tensor, temperature: float, beta: float = 0.5
) -> Tensor:
    """Return T^2 * weighted mean over positions of a divergence between dense teacher and student logits.

    kind: forward_kl | reverse_kl | jsd (with `beta` strictly between 0 and 1); student and teacher (..., V);
    weights (...) per position (0: not scored). The teacher gets no gradient (it is a fixed target).
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if kind == "jsd" and not 0.0 < beta < 1.0:
        raise ValueError(f"jsd needs 0 < beta < 1, got {beta}")
    if teacher.requires_grad:
        raise ValueError("chunked_divergence treats the teacher as a fixed target: detach its logits")
    return _ChunkedDivergence.apply(student, teacher, weights, kind, beta, temperature)
