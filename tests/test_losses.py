"""Response-based losses against hand computations."""

import math

import pytest
import torch

from kdkit.losses import cross_entropy, kd, kd_mse_mix, logit_mse, soft_target_kd
from kdkit.objective import Objective


def _softmax(v, T):
    e = [math.exp(x / T) for x in v]
    s = sum(e)
    return [x / s for x in e]


def test_kd_matches_hand_computation():
    s = [1.0, 2.0, 3.0]
    t = [3.0, 2.0, 1.0]
    T = 2.0
    ps, pt = _softmax(s, T), _softmax(t, T)
    expected = T * T * sum(q * math.log(q / p) for p, q in zip(ps, pt))
    got = kd(torch.tensor([s]), torch.tensor([t]), temperature=T)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # By hand: s/T = (.5, 1, 1.5) and t/T is its reverse, so log(pt/ps) = (1, 0, -1) and
    # KL = pt1 - pt3 = (e^1.5 - e^0.5) / (e^0.5 + e^1 + e^1.5) = 0.320157; times T^2 = 1.280627.
    assert got.item() == pytest.approx(1.280627, abs=2e-6)


def test_kd_is_batch_mean_and_zero_for_identical_logits():
    a = torch.tensor([[1.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    b = torch.tensor([[0.0, 1.0, 0.0], [2.0, 0.0, 0.0]])
    per = torch.stack([kd(a[i : i + 1], b[i : i + 1], 3.0) for i in range(2)])
    assert kd(a, b, 3.0).item() == pytest.approx(per.mean().item(), rel=1e-6)
    assert kd(a, a, 3.0).item() == pytest.approx(0.0, abs=1e-7)


def test_kd_gradient_is_T_times_probability_gap():
    # d/ds [T^2 KL(pt || ps)] = T (ps - pt) for one sample: the T^2 factor makes soft gradients O(1/T) * T^2.
    s = torch.tensor([[0.3, -1.2, 2.0, 0.1]], requires_grad=True)
    t = torch.tensor([[1.0, 0.5, -0.5, 0.0]])
    T = 5.0
    kd(s, t, T).backward()
    expected = T * (torch.softmax(s.detach() / T, -1) - torch.softmax(t / T, -1))
    torch.testing.assert_close(s.grad, expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("T", [1.0, 4.0, 20.0])
def test_kd_fused_path_matches_the_composed_loss_in_value_and_gradient(dtype, T):
    # A teacher without gradient takes kd's one-node path; it must equal the composed autograd version.
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(int(T))
    s0 = (torch.randn(64, 10, generator=g) * 6).to(dtype)
    t = torch.randn(64, 10, generator=g) * 8
    s = s0.clone().requires_grad_(True)
    loss = kd(s, t, T)
    assert loss.grad_fn is not None and type(loss.grad_fn).__name__ == "_KDBackward"
    (loss * 0.7).backward()
    r = s0.clone().requires_grad_(True)
    log_ps = F.log_softmax(r.float() / T, dim=-1)
    ref = F.kl_div(log_ps, F.log_softmax(t / T, dim=-1), reduction="batchmean", log_target=True) * T * T
    (ref * 0.7).backward()
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)
    assert s.grad.dtype == dtype
    tol = {"rtol": 1e-5, "atol": 1e-7} if dtype == torch.float32 else {"rtol": 1e-2, "atol": 1e-4}
    torch.testing.assert_close(s.grad, r.grad, **tol)

    # A teacher that learns too (joint training, mutual learning) takes the composed path: both get gradients.
    tt = t.clone().requires_grad_(True)
    s2 = s0.clone().float().requires_grad_(True)
    kd(s2, tt, T).backward()
    assert tt.grad is not None and tt.grad.abs().sum() > 0 and s2.grad is not None


def test_kd_high_temperature_gradient_approaches_logit_matching():
    # Hinton et al. eq. (4): with zero-mean logits and high T, the gradient of the T^2-scaled loss is
    # (z_i - v_i) / N, independent of T; without T^2 it would shrink like 1/T^2.
    s = torch.tensor([[1.0, -2.0, 0.5, 0.5]], requires_grad=True)
    t = torch.tensor([[-1.0, 1.0, 0.0, 0.0]])
    for T in (50.0, 200.0):
        s.grad = None
        kd(s, t, T).backward()
        torch.testing.assert_close(s.grad, (s.detach() - t) / 4, rtol=2e-2, atol=2e-3)


def test_logit_mse_and_mix():
    s = torch.tensor([[1.0, 2.0], [0.0, -1.0]])
    t = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    assert logit_mse(s, t).item() == pytest.approx((1 + 4 + 1 + 4) / 4)
    k = kd(s, t, 2.0).item()
    m = logit_mse(s, t).item()
    assert kd_mse_mix(s, t, 2.0, mix=1.0).item() == pytest.approx(k, rel=1e-6)
    assert kd_mse_mix(s, t, 2.0, mix=0.0).item() == pytest.approx(m, rel=1e-6)
    assert kd_mse_mix(s, t, 2.0, mix=0.3).item() == pytest.approx(0.3 * k + 0.7 * m, rel=1e-6)
    with pytest.raises(ValueError, match="mix"):
        kd_mse_mix(s, t, mix=1.5)


def test_soft_target_kd_equals_kd_for_softened_teacher():
    torch.manual_seed(0)
    s, t = torch.randn(8, 10), torch.randn(8, 10)
    T = 4.0
    a = soft_target_kd(s, torch.softmax(t / T, -1), T)
    torch.testing.assert_close(a, kd(s, t, T), rtol=1e-5, atol=1e-6)
    # A teacher that rules a class out entirely (probability 0) is fine: 0 log 0 = 0.
    p = torch.tensor([[1.0, 0.0, 0.0]])
    assert torch.isfinite(soft_target_kd(torch.zeros(1, 3), p, 1.0))
    assert soft_target_kd(torch.zeros(1, 3), p, 1.0).item() == pytest.approx(math.log(3), rel=1e-6)


def test_shape_mismatch_and_bad_temperature_raise():
    with pytest.raises(ValueError, match="same shape"):
        kd(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="temperature"):
        kd(torch.zeros(2, 3), torch.zeros(2, 3), temperature=0)


def test_objective_is_alpha_kd_plus_beta_ce():
    torch.manual_seed(1)
    s, t = torch.randn(5, 10), torch.randn(5, 10)
    y = torch.randint(0, 10, (5,))
    obj = Objective.response("kd", alpha=0.7, beta=0.3, temperature=3.0)
    total, parts = obj({"student.logits": s, "teacher.logits": t, "labels": y})
    expected = 0.7 * kd(s, t, 3.0) + 0.3 * cross_entropy(s, y)
    torch.testing.assert_close(total, expected)
    assert set(parts) == {"kd", "ce"}
    assert obj.needs_teacher
    assert not Objective.hard_labels().needs_teacher
    with pytest.raises(KeyError, match="teacher.logits"):
        obj({"student.logits": s, "labels": y})
