"""Per-token divergences for causal-LM distillation, checked against float64 references written here with plain
loops over positions and vocabulary (math module only, no torch), dense and sparse (top-k + rest bucket)."""

import math

import pytest
import torch

from kdkit import losses as L
from kdkit.losses import SparseTargets
from kdkit.losses.token_divergences import tail_mass
from kdkit.objective import Term

N, LEN, V = 3, 5, 7


def _case(seed=0):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(N, LEN, V, generator=g) * 2
    t = torch.randn(N, LEN, V, generator=g) * 2
    labels = torch.randint(0, V, (N, LEN), generator=g)
    labels[0, 1] = labels[2, 4] = labels[1, 0] = -100
    return s, t, labels


# ----------------------------------------------------------------------------- float64 references


def _softmax(row, temp):
    m = max(row)
    e = [math.exp((x - m) / temp) for x in row]
    z = sum(e)
    return [x / z for x in e]


def _kl(a, b):
    return sum(x * (math.log(x) - math.log(y)) for x, y in zip(a, b) if x > 0)


def _div(name, p, q, beta=0.5, alpha=0.1):
    if name == "fkl":
        return _kl(p, q)
    if name == "rkl":
        return _kl(q, p)
    if name == "jsd":
        m = [beta * x + (1 - beta) * y for x, y in zip(p, q)]
        return beta * _kl(p, m) + (1 - beta) * _kl(q, m)
    if name == "skl":
        return _kl(p, [alpha * x + (1 - alpha) * y for x, y in zip(p, q)])
    if name == "srkl":
        return _kl(q, [(1 - alpha) * x + alpha * y for x, y in zip(p, q)])
    if name == "tv":
        return 0.5 * sum(abs(x - y) for x, y in zip(p, q))
    raise KeyError(name)


def _reference(name, s, t, labels, temp=1.0, k=None, mask=None, **kw):
    """Mean over scored positions of T^2 * D(p_teacher, q_student); with k, over top-k of p + one rest bucket."""
    total, count = 0.0, 0
    for i in range(s.shape[0]):
        for j in range(s.shape[1]):
            if int(labels[i, j]) == -100 or (mask is not None and not bool(mask[i, j])):
                continue
            p = _softmax([float(x) for x in t[i, j].double()], temp)
            q = _softmax([float(x) for x in s[i, j].double()], temp)
            if k is not None:
                top = sorted(range(len(p)), key=lambda v: -p[v])[:k]
                rest = [v for v in range(len(p)) if v not in top]
                p = [p[v] for v in top] + [sum(p[v] for v in rest)]
                q = [q[v] for v in top] + [sum(q[v] for v in rest)]
            total += _div(name, p, q, **kw)
            count += 1
    return total / count * temp * temp


FUNCS = {
    "fkl": L.forward_kl,
    "rkl": L.reverse_kl,
    "jsd": L.generalized_jsd,
    "skl": L.skew_kl,
    "srkl": L.skew_reverse_kl,
    "tv": L.total_variation,
}
OPTS = {"jsd": [{"beta": 0.5}, {"beta": 0.1}, {"beta": 0.9}], "skl": [{"alpha": 0.1}, {"alpha": 0.4}]}
OPTS["srkl"] = OPTS["skl"]
CASES = [(n, o) for n in FUNCS for o in OPTS.get(n, [{}])]


@pytest.mark.parametrize("name, opts", CASES)
@pytest.mark.parametrize("temp", [1.0, 2.0])
def test_dense_matches_float64_reference(name, opts, temp):
    s, t, labels = _case()
    got = FUNCS[name](s, t, labels, temperature=temp, **opts)
    want = _reference(name, s, t, labels, temp, **opts)
    assert got.dtype == torch.float32
    assert float(got) == pytest.approx(want, rel=2e-5, abs=1e-7)


@pytest.mark.parametrize("name, opts", CASES)
@pytest.mark.parametrize("k", [1, 3, V])
def test_sparse_matches_float64_reference_with_a_rest_bucket(name, opts, k):
    s, t, labels = _case(1)
    sparse = SparseTargets.from_logits(t, k)
    got = FUNCS[name](s, sparse, labels, **opts)
    want = _reference(name, s, t, labels, k=k, **opts)
    assert float(got) == pytest.approx(want, rel=2e-5, abs=1e-7)
    if k == V:  # nothing left out: the sparse loss is the dense one
        assert float(got) == pytest.approx(float(FUNCS[name](s, t, labels, **opts)), rel=1e-5, abs=1e-7)
    else:  # coarse-graining the tail can only lower an f-divergence
        assert float(got) <= float(FUNCS[name](s, t, labels, **opts)) + 1e-6


def test_sparse_gradient_at_full_k_equals_the_dense_gradient():
    s, t, labels = _case(2)
    for name, fn in FUNCS.items():
        a = s.clone().requires_grad_()
        b = s.clone().requires_grad_()
        fn(a, t, labels).backward()
        fn(b, SparseTargets.from_logits(t, V), labels).backward()
        assert torch.isfinite(b.grad).all(), name
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_jsd_endpoints_are_forward_and_reverse_kl_and_the_limits_agree():
    s, t, labels = _case(3)
    fkl, rkl = float(L.forward_kl(s, t, labels)), float(L.reverse_kl(s, t, labels))
    assert fkl != pytest.approx(rkl, rel=1e-2)  # the pin below can tell them apart
    assert float(L.generalized_jsd(s, t, labels, beta=0.0)) == pytest.approx(fkl, rel=1e-6)
    assert float(L.generalized_jsd(s, t, labels, beta=1.0)) == pytest.approx(rkl, rel=1e-6)
    # The unscaled interior tends to the same divergences after dividing by beta (resp. 1 - beta).
    eps = 1e-5
    assert _reference("jsd", s, t, labels, beta=eps) / eps == pytest.approx(fkl, rel=1e-2)
    assert _reference("jsd", s, t, labels, beta=1 - eps) / eps == pytest.approx(rkl, rel=1e-2)
    # Skews at alpha = 0 are the plain divergences.
    assert float(L.skew_kl(s, t, labels, alpha=0.0)) == pytest.approx(fkl, rel=1e-6)
    assert float(L.skew_reverse_kl(s, t, labels, alpha=0.0)) == pytest.approx(rkl, rel=1e-6)


def test_mask_and_ignore_index_select_the_scored_tokens():
    s, t, labels = _case(4)
    mask = torch.ones(N, LEN, dtype=torch.bool)
    mask[:, :2] = False  # a prompt
    got = L.forward_kl(s, t, labels, mask=mask)
    assert float(got) == pytest.approx(_reference("fkl", s, t, labels, mask=mask), rel=2e-5)
    # Changing an unscored position changes nothing.
    s2 = s.clone()
    s2[0, 0, 0] += 5.0  # masked (a uniform shift would not change the softmax)
    s2[0, 1, 1] -= 3.0  # label -100
    assert float(L.forward_kl(s2, t, labels, mask=mask)) == float(got)
    assert float(L.forward_kl(s2, t, labels)) != float(L.forward_kl(s, t, labels))
    # Nothing scored: 0, not nan.
    assert float(L.reverse_kl(s, t, torch.full_like(labels, -100))) == 0.0


def test_identical_distributions_score_zero_and_divergences_are_nonnegative():
    s, t, labels = _case(5)
    for name, fn in FUNCS.items():
        assert abs(float(fn(t, t, labels))) < 1e-6, name
        assert float(fn(s, t, labels)) > 0, name


def test_next_token_cross_entropy_matches_a_loop_and_the_ce_term():
    s, _, labels = _case(6)
    mask = torch.ones(N, LEN)
    mask[1, 2] = 0
    nll, n = 0.0, 0
    for i in range(N):
        for j in range(LEN):
            y = int(labels[i, j])
            if y == -100 or mask[i, j] == 0:
                continue
            q = _softmax([float(x) for x in s[i, j].double()], 1.0)
            nll -= math.log(q[y])
            n += 1
    assert float(L.next_token_cross_entropy(s, labels, mask)) == pytest.approx(nll / n, rel=1e-5)
    ce = Term.from_name("ce")({"student.logits": s, "labels": labels})
    assert float(L.next_token_cross_entropy(s, labels)) == pytest.approx(float(ce), rel=1e-6)


def test_sparse_targets_tail_is_exact_and_temperature_must_agree():
    _, t, labels = _case(7)
    sp = SparseTargets.from_logits(t, 2, temperature=2.0)
    p = torch.softmax(t.double() / 2.0, dim=-1)
    kept = p.gather(-1, sp.ids).sum(-1)
    torch.testing.assert_close(sp.tail.double(), 1 - kept, rtol=1e-5, atol=1e-7)
    assert float(tail_mass(torch.log_softmax(t, -1), torch.arange(V).expand(N, LEN, V)).abs().max()) == 0.0
    with pytest.raises(ValueError, match="made at temperature 2.0, the loss asks for 1.0"):
        L.forward_kl(t, sp, labels)
    with pytest.raises(ValueError, match="tail"):
        SparseTargets(sp.ids, sp.logprobs, sp.tail[:, :1])
    with pytest.raises(ValueError, match="same shape"):
        L.forward_kl(t[..., :3], t, labels)
    with pytest.raises(ValueError, match="beta must lie in"):
        L.generalized_jsd(t, t, labels, beta=1.5)


def test_terms_are_registered_and_read_logits_and_labels():
    s, t, labels = _case(8)
    for name, fn, opts in [
        ("forward_kl", L.forward_kl, {"temperature": 2.0}),
        ("reverse_kl", L.reverse_kl, {}),
        ("gkd_jsd", L.generalized_jsd, {"beta": 0.3}),
        ("skew_kl", L.skew_kl, {"alpha": 0.2}),
        ("skew_reverse_kl", L.skew_reverse_kl, {"alpha": 0.2}),
        ("total_variation", L.total_variation, {}),
    ]:
        term = Term.from_name(name, 1.0, **opts)
        assert term.inputs == ("student.logits", "teacher.logits", "labels")
        got = term({"student.logits": s, "teacher.logits": t, "labels": labels})
        assert float(got) == float(fn(s, t, labels, **opts)) and float(got) > 0
