"""The chunked, closed-form-gradient divergences equal the autograd formulas, value and gradient."""

from __future__ import annotations

import pytest
import torch

from kdkit.losses import chunked_divergences as cd
from kdkit.losses import token_divergences as td


def _autograd(kind: str, s, t, w, temperature: float, beta: float):
    """The autograd formulas of token_divergences, on dense targets (the path sparse targets take)."""
    log_p, log_q = td._pair(s, t, temperature)
    if kind == "forward_kl":
        per = td._kl(log_p, log_q)
    elif kind == "reverse_kl":
        per = td._kl(log_q, log_p)
    elif kind == "skew_kl":
        per = td._kl(log_p, td._mix(log_p, log_q, beta))
    elif kind == "skew_reverse_kl":
        per = td._kl(log_q, td._mix(log_q, log_p, beta))
    elif kind == "total_variation":
        per = 0.5 * (log_p.exp() - log_q.exp()).abs().sum(dim=-1)
    else:
        log_m = td._mix(log_p, log_q, beta)
        per = beta * td._kl(log_p, log_m) + (1 - beta) * td._kl(log_q, log_m)
    return td._mean(per, w, temperature)


@pytest.mark.parametrize("kind", cd.KINDS)
@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_value_and_gradient_equal_autograd_across_chunk_boundaries(kind, temperature, monkeypatch):
    monkeypatch.setattr(cd, "CHUNK_ELEMENTS", 7 * 50)  # 7 rows a chunk: 3 x 11 = 33 rows end mid-chunk
    g = torch.Generator().manual_seed(0)
    s = (torch.randn(3, 11, 50, generator=g) * 5).requires_grad_()
    t = torch.randn(3, 11, 50, generator=g) * 5
    t[0, 0, :10] = -float("inf")  # tokens the teacher rules out: floored, as in the autograd path
    w = (torch.rand(3, 11, generator=g) > 0.3).float()
    ref = _autograd(kind, s, t, w, temperature, 0.3)
    (g_ref,) = torch.autograd.grad(ref, s)
    got = cd.chunked_divergence(kind, s, t, w, temperature, beta=0.3)
    (g_got,) = torch.autograd.grad(got, s)
    assert torch.isfinite(got) and got.item() == pytest.approx(ref.item(), rel=1e-6, abs=1e-7)
    assert torch.allclose(g_got, g_ref, rtol=1e-5, atol=1e-6 * g_ref.abs().max().item())  # float32 rounding
    assert (g_got[w == 0] == 0).all()  # unscored positions get no gradient
    # The public functions take this path for dense targets, and give the same numbers.
    mask = w.long()
    public = {
        "forward_kl": lambda: td.forward_kl(s, t, temperature=temperature, mask=mask),
        "reverse_kl": lambda: td.reverse_kl(s, t, temperature=temperature, mask=mask),
        "jsd": lambda: td.generalized_jsd(s, t, temperature=temperature, beta=0.3, mask=mask),
        "skew_kl": lambda: td.skew_kl(s, t, temperature=temperature, alpha=0.3, mask=mask),
        "skew_reverse_kl": lambda: td.skew_reverse_kl(s, t, temperature=temperature, alpha=0.3, mask=mask),
        "total_variation": lambda: td.total_variation(s, t, temperature=temperature, mask=mask),
    }[kind]()
    assert public.item() == pytest.approx(got.item(), rel=1e-6)
    assert public.grad_fn is not None and type(public.grad_fn).__name__.startswith("_Chunked")  # the fast path


def test_bf16_student_logits_get_a_bf16_gradient_and_float32_arithmetic():
    g = torch.Generator().manual_seed(1)
    s32 = torch.randn(4, 9, 64, generator=g) * 3
    t = torch.randn(4, 9, 64, generator=g) * 3
    w = torch.ones(4, 9)
    s16 = s32.bfloat16().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):  # inside a training step's autocast
        got = cd.chunked_divergence("jsd", s16, t, w, 1.0, 0.5)
    got.backward()
    assert got.dtype == torch.float32 and s16.grad is not None and s16.grad.dtype == torch.bfloat16
    ref = _autograd("jsd", s16.detach().float().requires_grad_(), t, w, 1.0, 0.5)
    assert got.item() == pytest.approx(ref.item(), rel=1e-6)


def test_no_gradient_is_kept_for_a_student_without_one_and_teachers_are_fixed_targets():
    s, t, w = torch.randn(2, 3, 8), torch.randn(2, 3, 8), torch.ones(2, 3)
    value = cd.chunked_divergence("forward_kl", s, t, w, 1.0)
    assert value.item() == pytest.approx(_autograd("forward_kl", s, t, w, 1.0, 0.5).item(), rel=1e-6)
    with pytest.raises(ValueError, match="fixed target"):
        cd.chunked_divergence("forward_kl", s, t.requires_grad_(), w, 1.0)
    # The public function keeps the autograd path for a teacher that takes gradients (joint training).
    s2 = s.clone().requires_grad_()
    td.forward_kl(s2, t).backward()
    assert t.grad is not None and s2.grad is not None
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        cd.chunked_divergence("jsd", s, t.detach(), w, 1.0, beta=1.0)
    with pytest.raises(ValueError, match="kind must be one of"):
        cd.chunked_divergence("tv", s, t.detach(), w, 1.0)


@pytest.mark.parametrize("k", [1, 5, 50])
def test_sparse_forward_kl_equals_autograd_over_the_kept_ids_and_the_rest(k, monkeypatch):
    """Top-k targets: the chunked path (what the cache trains on) equals the autograd formula; at k = V the
    rest is empty and it equals the dense forward KL."""
    monkeypatch.setattr(cd, "CHUNK_ELEMENTS", 4 * 50)
    g = torch.Generator().manual_seed(2)
    s = (torch.randn(2, 13, 50, generator=g) * 4).requires_grad_()
    teacher = torch.randn(2, 13, 50, generator=g) * 4
    w = (torch.rand(2, 13, generator=g) > 0.2).float()
    sparse = td.SparseTargets.from_logits(teacher, k, temperature=2.0)
    ref = td._mean(td._kl(*td._pair(s, sparse, 2.0)), w, 2.0)
    (g_ref,) = torch.autograd.grad(ref, s)
    got = cd.chunked_sparse_forward_kl(s, sparse.ids, sparse.logprobs, sparse.tail, w, 2.0)
    (g_got,) = torch.autograd.grad(got, s)
    assert got.item() == pytest.approx(ref.item(), rel=1e-5)
    assert torch.allclose(g_got, g_ref, rtol=1e-4, atol=1e-6 * g_ref.abs().max().item())
    public = td.forward_kl(s, sparse, temperature=2.0, mask=w.long())
    assert public.item() == pytest.approx(got.item(), rel=1e-6)
    if k == 50:
        dense = td.forward_kl(s, teacher, temperature=2.0, mask=w.long())
        assert got.item() == pytest.approx(dense.item(), rel=1e-5)


@pytest.mark.parametrize("kind", cd.MIXED)
@pytest.mark.parametrize("weight", [0.0, 1.0, -0.1])
def test_mixed_kinds_refuse_a_weight_outside_the_open_interval(kind, weight):
    s, t, w = torch.randn(2, 5), torch.randn(2, 5), torch.ones(2)
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        cd.chunked_divergence(kind, s, t, w, 1.0, beta=weight)


def test_the_skews_at_their_end_points_are_the_kls_and_zero():
    g = torch.Generator().manual_seed(3)
    s, t = torch.randn(4, 9, generator=g).requires_grad_(), torch.randn(4, 9, generator=g)
    assert td.skew_kl(s, t, alpha=0.0).item() == pytest.approx(td.forward_kl(s, t).item(), rel=1e-6)
    assert td.skew_reverse_kl(s, t, alpha=0.0).item() == pytest.approx(td.reverse_kl(s, t).item(), rel=1e-6)
    assert td.skew_kl(s, t, alpha=1.0).item() == pytest.approx(0.0, abs=1e-6)
    assert td.skew_reverse_kl(s, t, alpha=1.0).item() == pytest.approx(0.0, abs=1e-6)
