"""Feature, relation and contrastive distillation losses against hand computations and re-stated references.

Each "reference" helper below restates the published definition (RepDistiller distiller_zoo / crd,
mdistiller DKD) with numpy loops in float64; none of them calls the function under test.
"""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kdkit.losses import kd
from kdkit.losses.contrastive import ContrastLoss, ContrastMemory, Embed, contrast_loss
from kdkit.losses.feature import (
    attention_transfer,
    attention_transfer_multi,
    factor_transfer,
    fitnet,
    fsp,
    nst,
)
from kdkit.losses.modules import CRDLoss, Paraphraser, Translator, VIDLoss
from kdkit.losses.relation import (
    correlation_congruence,
    dist,
    dist_parts,
    dkd,
    dkd_parts,
    dkd_warmup,
    pkt,
    rkd,
    similarity_preserving,
)

SQ2, SQ5 = math.sqrt(2.0), math.sqrt(5.0)


def _np(x):
    return x.detach().double().numpy()


def _close(got, expected, rel=1e-5, abs_=1e-7):
    got = got.item() if isinstance(got, torch.Tensor) else got
    assert float(got) == pytest.approx(float(expected), rel=rel, abs=abs_)


def _grads(fn, s, t):
    s = s.clone().requires_grad_(True)
    t = t.clone().requires_grad_(True)
    fn(s, t).backward()
    return s.grad, t.grad


def _pool_np(x, size):
    # Adaptive average pooling for sizes that divide evenly: block means.
    b, c, h, w = x.shape
    oh, ow = size
    return x.reshape(b, c, oh, h // oh, ow, w // ow).mean(axis=(3, 5))


def _unit(v):
    n = np.sqrt((v**2).sum())
    return v / max(n, 1e-12)


# ---------------------------------------------------------------------------------------------- FitNet


def test_fitnet_hand_value_zero_gradient_and_shape_error():
    s = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    t = torch.tensor([[0.0, 2.0], [3.0, 2.0]])
    # Differences 1, 0, 0, 2 -> (1 + 0 + 0 + 4) / 4 = 1.25.
    assert fitnet(s, t).item() == pytest.approx(1.25, abs=1e-6)
    assert fitnet(t, t).item() == 0.0
    gs, _ = _grads(fitnet, s, t)
    torch.testing.assert_close(gs, (s - t) / 2)  # d/ds mean((s-t)^2) = 2 (s - t) / 4
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(2, 2\).*adapter"):
        fitnet(torch.zeros(2, 3), t)


# ---------------------------------------------------------------------------------------------- AT


def _at_ref(fs, ft, p=2):
    s, t = _np(fs), _np(ft)
    if s.shape[2] > t.shape[2]:
        s = _pool_np(s, t.shape[2:])
    elif t.shape[2] > s.shape[2]:
        t = _pool_np(t, s.shape[2:])
    b, _, h, w = s.shape
    total = 0.0
    for i in range(b):
        a_s = np.array([[np.mean(s[i, :, y, x] ** p) for x in range(w)] for y in range(h)]).ravel()
        a_t = np.array([[np.mean(t[i, :, y, x] ** p) for x in range(w)] for y in range(h)]).ravel()
        total += ((_unit(a_s) - _unit(a_t)) ** 2).sum()
    return total / (b * h * w)


def _at_tiny():
    # 2 samples, 2 channels, 1x2 maps; sample 1 is identical for student and teacher.
    s = torch.tensor([[[[1.0, 2.0]], [[1.0, 0.0]]], [[[1.0, -1.0]], [[2.0, 0.5]]]])
    t = torch.tensor([[[[2.0, 0.0]], [[0.0, 0.0]]], [[[1.0, -1.0]], [[2.0, 0.5]]]])
    return s, t


def test_attention_transfer_hand_value():
    s, t = _at_tiny()
    # Sample 0: student channel mean of squares (1, 2) -> unit (1, 2)/sqrt5; teacher (2, 0) -> (1, 0).
    # Squared difference (1 - 1/sqrt5)^2 + 4/5 = 2 - 2/sqrt5; sample 1 adds 0; mean over 2*2 entries:
    # (2 - 2/sqrt5) / 4 = 0.5 - 0.5/sqrt5 = 0.2763932.
    assert attention_transfer(s, t).item() == pytest.approx(0.5 - 0.5 / SQ5, abs=1e-6)
    assert attention_transfer(s, t).item() == pytest.approx(0.2763932, abs=1e-6)


def test_attention_transfer_matches_reference_pools_and_sums_lists():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(3, 4, 4, 4, generator=g), torch.randn(3, 6, 4, 4, generator=g)
    _close(attention_transfer(s, t), _at_ref(s, t))
    _close(attention_transfer(s, t, p=4), _at_ref(s, t, p=4))
    # Larger student map is pooled to the teacher's 2x2 (and vice versa), channels may differ.
    t2 = torch.randn(3, 6, 2, 2, generator=g)
    _close(attention_transfer(s, t2), _at_ref(s, t2))
    _close(attention_transfer(t2, s), _at_ref(t2, s))
    total = attention_transfer([s, s], [t, t2])
    _close(total, _at_ref(s, t) + _at_ref(s, t2))
    _close(attention_transfer_multi([s, s], [t, t2]), total)


def test_attention_transfer_zero_gradient_and_errors():
    s, t = _at_tiny()
    assert attention_transfer(s, s).item() == pytest.approx(0.0, abs=1e-12)
    gs, gt = _grads(attention_transfer, s, t)
    assert gs.abs().sum() > 0
    assert gt is not None  # RepDistiller does not detach the teacher; kdkit's teacher runs under no_grad.
    with pytest.raises(ValueError, match="batch"):
        attention_transfer(s, t[:1])
    with pytest.raises(ValueError, match="height, width"):
        attention_transfer(s.flatten(1), t)
    with pytest.raises(ValueError, match="equally long"):
        attention_transfer([s, s], [t])
    with pytest.raises(ValueError, match="two lists"):
        attention_transfer([s], t)


# ---------------------------------------------------------------------------------------------- SP


def _sp_ref(fs, ft):
    s, t = _np(fs).reshape(fs.shape[0], -1), _np(ft).reshape(ft.shape[0], -1)
    b = s.shape[0]
    gs = np.array([_unit(np.array([s[i] @ s[j] for j in range(b)])) for i in range(b)])
    gt = np.array([_unit(np.array([t[i] @ t[j] for j in range(b)])) for i in range(b)])
    return ((gs - gt) ** 2).sum() / (b * b)


def test_similarity_preserving_hand_value_and_reference():
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    t = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    # G_s = I (rows already unit); G_t = all ones -> rows 1/sqrt2. Squared differences: diagonal
    # 2 * (1 - 1/sqrt2)^2, off-diagonal 2 * 1/2; sum 4 - 2 sqrt2; / B^2 = 4 -> 1 - sqrt2/2 = 0.2928932.
    assert similarity_preserving(s, t).item() == pytest.approx(1 - SQ2 / 2, abs=1e-6)
    g = torch.Generator().manual_seed(1)
    fs, ft = torch.randn(5, 3, 2, 2, generator=g), torch.randn(5, 7, 1, 3, generator=g)
    _close(similarity_preserving(fs, ft), _sp_ref(fs, ft))
    assert similarity_preserving(fs, fs).item() == pytest.approx(0.0, abs=1e-12)
    gs, _ = _grads(similarity_preserving, fs, ft)
    assert gs.abs().sum() > 0
    with pytest.raises(ValueError, match="batch"):
        similarity_preserving(fs, ft[:4])


# ---------------------------------------------------------------------------------------------- NST


def _nst_ref(fs, ft):
    s, t = _np(fs), _np(ft)
    b = s.shape[0]
    s = s.reshape(b, s.shape[1], -1)
    t = t.reshape(b, t.shape[1], -1)

    def k(a, c):
        return np.mean(
            [
                (_unit(a[i, x]) @ _unit(c[i, y])) ** 2
                for i in range(b)
                for x in range(a.shape[1])
                for y in range(c.shape[1])
            ]
        )

    return k(t, t) + k(s, s) - 2 * k(s, t)


def test_nst_hand_value():
    s = torch.tensor([[[[3.0, 4.0]], [[1.0, 0.0]]]])  # channels -> unit (0.6, 0.8) and (1, 0)
    t = torch.tensor([[[[0.0, 1.0]]]])  # one channel -> (0, 1)
    # k(t,t) = 1. k(s,s): dots 1, 0.6, 0.6, 1 -> squares mean (1 + .36 + .36 + 1)/4 = 0.68.
    # k(s,t): dots 0.8, 0 -> squares mean 0.32. Loss = 1 + 0.68 - 2 * 0.32 = 1.04.
    assert nst(s, t).item() == pytest.approx(1.04, abs=1e-6)


def test_nst_reference_zero_and_detached_teacher_term():
    g = torch.Generator().manual_seed(2)
    s, t = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 5, 2, 2, generator=g)
    _close(nst(s, t), _nst_ref(F.adaptive_avg_pool2d(s, 2), t))
    _close(nst(t, s), _nst_ref(t, F.adaptive_avg_pool2d(s, 2)))
    assert nst(s, s).item() == pytest.approx(0.0, abs=1e-6)
    # Only k(t, t) is detached in the reference: the teacher's gradient is exactly that of -2 mean k(s, t).
    s2 = torch.randn(2, 3, 2, 2, generator=g)
    gs, gt = _grads(nst, s2, t)
    assert gs.abs().sum() > 0
    tt = t.clone().requires_grad_(True)
    sn = F.normalize(s2.reshape(2, 3, -1), dim=2)
    tn = F.normalize(tt.reshape(2, 5, -1), dim=2)
    (-2 * torch.einsum("bin,bjn->bij", sn, tn).pow(2).mean()).backward()
    torch.testing.assert_close(gt, tt.grad, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="batch"):
        nst(s, t[:1])


# ---------------------------------------------------------------------------------------------- FSP


def _fsp_ref(gs, gt):
    def mats(feats):
        out = []
        for bot, top in zip(feats[:-1], feats[1:]):
            b, t = _np(bot), _np(top)
            if b.shape[2] > t.shape[2]:
                b = _pool_np(b, t.shape[2:])
            elif t.shape[2] > b.shape[2]:
                t = _pool_np(t, b.shape[2:])
            n = b.shape[0]
            g = np.zeros((n, t.shape[1], b.shape[1]))
            for i in range(n):
                for j in range(t.shape[1]):
                    for k in range(b.shape[1]):
                        g[i, j, k] = np.mean(t[i, j] * b[i, k])
            out.append(g)
        return out

    return sum(((a - c) ** 2).mean() for a, c in zip(mats(gs), mats(gt)))


def test_fsp_hand_value():
    s = [torch.tensor([[[[1.0, 2.0]]]]), torch.tensor([[[[1.0, 1.0]], [[0.0, 3.0]]]])]
    t = [torch.tensor([[[[2.0, 0.0]]]]), torch.tensor([[[[1.0, 0.0]], [[1.0, 1.0]]]])]
    # G[j, i] = mean over positions of top_j * bot_i. Student: (1*1 + 1*2)/2 = 1.5, (0 + 3*2)/2 = 3.
    # Teacher: (1*2 + 0)/2 = 1, (1*2 + 0)/2 = 1. Loss = ((1.5 - 1)^2 + (3 - 1)^2) / 2 = 2.125.
    assert fsp(s, t).item() == pytest.approx(2.125, abs=1e-6)


def test_fsp_reference_zero_gradient_and_errors():
    g = torch.Generator().manual_seed(3)
    s = [
        torch.randn(2, 3, 4, 4, generator=g),
        torch.randn(2, 4, 2, 2, generator=g),
        torch.randn(2, 2, 2, 2, generator=g),
    ]
    t = [
        torch.randn(2, 3, 2, 2, generator=g),
        torch.randn(2, 4, 2, 2, generator=g),
        torch.randn(2, 2, 1, 1, generator=g),
    ]
    _close(fsp(s, t), _fsp_ref(s, t))
    assert fsp(s, s).item() == 0.0
    s0 = s[0].clone().requires_grad_(True)
    fsp([s0, *s[1:]], t).backward()
    assert s0.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="channel"):
        fsp([s[0], s[1]], [t[0], torch.randn(2, 5, 2, 2)])
    with pytest.raises(ValueError, match="at least 2"):
        fsp(s[:1], t[:1])


# ---------------------------------------------------------------------------------------------- FT


def test_factor_transfer_hand_values_modules_and_errors():
    s, t = _at_tiny()
    # The factor is the p=2 attention map of the AT example: sample 0 differs by (1/sqrt5 - 1, 2/sqrt5).
    # L1: ((1 - 1/sqrt5) + 2/sqrt5) / 4 = (1 + 1/sqrt5) / 4 = 0.3618034; L2 equals the AT value.
    assert factor_transfer(s, t).item() == pytest.approx((1 + 1 / SQ5) / 4, abs=1e-6)
    assert factor_transfer(s, t, p=2).item() == pytest.approx(0.5 - 0.5 / SQ5, abs=1e-6)
    g = torch.Generator().manual_seed(4)
    a, b = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 5, 2, 2, generator=g)
    ref_l1 = np.mean(
        [
            abs(x - y)
            for i in range(2)
            for x, y in zip(
                _unit((_pool_np(_np(a), (2, 2))[i] ** 2).mean(0).ravel()),
                _unit((_np(b)[i] ** 2).mean(0).ravel()),
            )
        ]
    )
    _close(factor_transfer(a, b), ref_l1)
    assert factor_transfer(a, a).item() == 0.0
    with pytest.raises(ValueError, match="p=1"):
        factor_transfer(a, b, p=3)
    # Paraphraser / Translator follow RepDistiller's layouts: factor has k * C_t channels.
    para = Paraphraser((2, 8, 4, 4), k=0.5)
    trans = Translator((2, 6, 4, 4), (2, 8, 4, 4), k=0.5)
    ft, fs = torch.randn(2, 8, 4, 4, generator=g), torch.randn(2, 6, 4, 4, generator=g)
    factor, rec = para(ft)
    assert factor.shape == (2, 4, 4, 4) and rec.shape == ft.shape
    assert para(ft, is_factor=True).shape == (2, 4, 4, 4)
    out = trans(fs)
    assert out.shape == (2, 4, 4, 4)
    factor_transfer(out, factor.detach()).backward()
    assert all(p.grad is not None for p in trans.parameters())
    assert [type(m).__name__ for m in trans.encoder][:3] == ["Conv2d", "BatchNorm2d", "LeakyReLU"]
    assert type(para.encoder[1]).__name__ == "Identity"  # use_bn=False by default for the paraphraser


# ---------------------------------------------------------------------------------------------- PKT


def _pkt_ref(fs, ft, eps=1e-7):
    s, t = _np(fs), _np(ft)
    b = s.shape[0]
    s = s / (np.sqrt((s**2).sum(1, keepdims=True)) + eps)
    t = t / (np.sqrt((t**2).sum(1, keepdims=True)) + eps)
    p = np.array([[(s[i] @ s[j] + 1) / 2 for j in range(b)] for i in range(b)])
    q = np.array([[(t[i] @ t[j] + 1) / 2 for j in range(b)] for i in range(b)])
    p /= p.sum(1, keepdims=True)
    q /= q.sum(1, keepdims=True)
    return np.mean(q * np.log((q + eps) / (p + eps)))


def test_pkt_hand_value_reference_zero_and_errors():
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    t = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    # Student cosines I -> (c+1)/2 = [[1, .5], [.5, 1]] -> rows [[2/3, 1/3], [1/3, 2/3]]; teacher all 1/2.
    # Each row: .5 ln(.5 / (2/3)) + .5 ln(.5 / (1/3)) = .5 ln 1.125; two rows, mean over 4 entries:
    # ln(1.125) / 4 = 0.0294458.
    assert pkt(s, t).item() == pytest.approx(math.log(1.125) / 4, abs=1e-6)
    g = torch.Generator().manual_seed(5)
    a, b = torch.randn(6, 4, generator=g), torch.randn(6, 9, generator=g)
    _close(pkt(a, b), _pkt_ref(a, b))
    assert pkt(a, a).item() == pytest.approx(0.0, abs=1e-6)
    gs, gt = _grads(pkt, a, b)
    assert gs.abs().sum() > 0 and gt is not None  # the reference does not detach the teacher
    with pytest.raises(ValueError, match="batch"):
        pkt(a, b[:5])


# ---------------------------------------------------------------------------------------------- RKD


def _rkd_ref(fs, ft, wd=25.0, wa=50.0):
    def sl1(x):
        x = abs(x)
        return 0.5 * x * x if x < 1 else x - 0.5

    def dist(e):
        n = e.shape[0]
        d = np.array([[np.linalg.norm(e[i] - e[j]) if i != j else 0.0 for j in range(n)] for i in range(n)])
        return d / d[d > 0].mean()

    def angles(e):
        n = e.shape[0]
        return np.array(
            [_unit(e[j] - e[i]) @ _unit(e[k] - e[i]) for i in range(n) for j in range(n) for k in range(n)]
        )

    s, t = _np(fs).reshape(fs.shape[0], -1), _np(ft).reshape(ft.shape[0], -1)
    ld = np.mean([sl1(x) for x in (dist(s) - dist(t)).ravel()])
    la = np.mean([sl1(x) for x in angles(s) - angles(t)])
    return wd * ld + wa * la


def test_rkd_hand_value():
    s = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # right triangle
    t = torch.tensor([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]])  # collinear
    # Distances: student 1, 1, sqrt2 / mean (2 + sqrt2)/3 -> 0.8786797, 0.8786797, 1.2426407; teacher
    # 1, 2, 1 / mean 4/3 -> 0.75, 1.5, 0.75. All |diff| < 1, smooth-L1 = x^2/2, each pair twice in 9:
    # (0.1286797^2 + 0.6213203^2 + 0.4926406^2) / 9 = 0.0716991.
    assert rkd(s, t, 1.0, 0.0).item() == pytest.approx(0.0716991, abs=1e-6)
    # Angles (cosines at vertex i between j and k; zero vectors give 0, j = k gives 1 on both sides):
    # vertex 0: student 0 vs teacher 1 -> smooth-L1(1) = .5; vertex 1: 1/sqrt2 vs -1 -> 1/sqrt2 + .5;
    # vertex 2: 1/sqrt2 vs 1 -> (1 - 1/sqrt2)^2 / 2. Each twice: 2 * 1.75 = 3.5 over 27 triplets.
    assert rkd(s, t, 0.0, 1.0).item() == pytest.approx(3.5 / 27, abs=1e-6)
    assert rkd(s, t).item() == pytest.approx(25 * 0.0716991 + 50 * 3.5 / 27, abs=1e-4)


def test_rkd_reference_scale_invariance_gradient_and_errors():
    g = torch.Generator().manual_seed(6)
    a, b = torch.randn(5, 3, generator=g), torch.randn(5, 2, 2, generator=g)
    _close(rkd(a, b), _rkd_ref(a, b))
    # Distances are normalised by their mean and angles are scale-free: a scaled copy costs nothing.
    assert rkd(a, 3.0 * a).item() == pytest.approx(0.0, abs=1e-5)
    gs, gt = _grads(rkd, a, b)
    assert gs.abs().sum() > 0
    assert gt is None  # teacher relations are computed under no_grad, as in the reference
    with pytest.raises(ValueError, match="batch"):
        rkd(a, b[:4])


# ---------------------------------------------------------------------------------------------- CC


def test_correlation_congruence_repdistiller_definition():
    s = torch.tensor([[1.0, 2.0], [2.0, 1.0], [1.0, 3.0]])
    t = torch.zeros(3, 2)
    # |s - t| rows (1,2), (2,1), (1,3): consecutive products summed 1*2 + 2*1 = 4 and 2*1 + 1*3 = 5;
    # mean over the 2 consecutive pairs = 4.5.
    assert correlation_congruence(s, t).item() == pytest.approx(4.5, abs=1e-6)
    g = torch.Generator().manual_seed(7)
    a, b = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    d = np.abs(_np(a) - _np(b))
    _close(correlation_congruence(a, b), np.mean([d[i] @ d[i + 1] for i in range(5)]))
    assert correlation_congruence(a, a).item() == 0.0
    # It couples neighbours in batch order, so (unlike a correlation matrix) it depends on that order.
    perm = torch.tensor([0, 2, 1, 3, 4, 5])
    assert correlation_congruence(a[perm], b[perm]).item() != pytest.approx(
        correlation_congruence(a, b).item()
    )
    gs, _ = _grads(correlation_congruence, a, b)
    assert gs.abs().sum() > 0
    with pytest.raises(ValueError, match="equal embedding shapes"):
        correlation_congruence(a, torch.randn(6, 4))
    with pytest.raises(ValueError, match="kernel"):
        correlation_congruence(a, b, kernel="rbf")


def test_correlation_congruence_gaussian_kernel_variant():
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    t = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    # C(x) = e^-0.8 (1 + 0.8 x + 0.32 x^2) for cosine x (gamma 0.4, order 2). Diagonals agree; off-diagonal
    # student x = 0 -> e^-0.8, teacher x = 1 -> 2.12 e^-0.8; MSE over 4 entries = 2 (1.12 e^-0.8)^2 / 4.
    assert correlation_congruence(s, t, kernel="gaussian").item() == pytest.approx(
        0.5 * (1.12 * math.exp(-0.8)) ** 2, abs=1e-6
    )
    g = torch.Generator().manual_seed(8)
    a, b = torch.randn(4, 3, generator=g), torch.randn(4, 6, generator=g)

    def corr(x, gamma=0.3, order=3):
        x = np.array([_unit(r) for r in _np(x)])
        c = x @ x.T
        return sum(
            math.exp(-2 * gamma) * (2 * gamma) ** p / math.factorial(p) * c**p for p in range(order + 1)
        )

    _close(
        correlation_congruence(a, b, kernel="gaussian", gamma=0.3, order=3), np.mean((corr(a) - corr(b)) ** 2)
    )


# ---------------------------------------------------------------------------------------------- DKD


def _dkd_ref(s, t, y, alpha, beta, temp):
    # Paper definition: TCKD on the binary (p_gt, 1 - p_gt), NCKD on the renormalised non-target classes.
    s, t = _np(s) / temp, _np(t) / temp
    total = 0.0
    for i in range(s.shape[0]):
        ps = np.exp(s[i] - s[i].max())
        ps /= ps.sum()
        pt = np.exp(t[i] - t[i].max())
        pt /= pt.sum()
        g = int(y[i])
        bs, bt = np.array([ps[g], 1 - ps[g]]), np.array([pt[g], 1 - pt[g]])
        tckd = (bt * np.log(bt / bs)).sum()
        keep = [c for c in range(len(ps)) if c != g]
        qs, qt = ps[keep] / ps[keep].sum(), pt[keep] / pt[keep].sum()
        nckd = (qt * np.log(qt / qs)).sum()
        total += (alpha * tckd + beta * nckd) * temp**2
    return total / s.shape[0]


def test_dkd_hand_value():
    s = torch.tensor([[0.0, math.log(2.0), 0.0]])  # probabilities (1/4, 1/2, 1/4)
    t = torch.tensor([[math.log(2.0), 0.0, 0.0]])  # probabilities (1/2, 1/4, 1/4)
    y = torch.tensor([0])
    # TCKD: KL((1/2, 1/2) || (1/4, 3/4)) = .5 ln 2 + .5 ln(2/3) = .5 ln(4/3) = 0.1438410.
    # NCKD: KL((1/2, 1/2) || (2/3, 1/3)) = .5 ln(3/4) + .5 ln(3/2) = .5 ln(9/8) = 0.0588915.
    tckd, nckd = dkd_parts(s, t, y, temperature=1.0)
    assert tckd.item() == pytest.approx(0.5 * math.log(4 / 3), abs=1e-6)
    assert nckd.item() == pytest.approx(0.5 * math.log(9 / 8), abs=1e-6)
    # Default alpha=1, beta=8: 0.1438410 + 8 * 0.0588915 = 0.6149732.
    assert dkd(s, t, y, temperature=1.0).item() == pytest.approx(0.6149732, abs=1e-6)
    # Paper eq. (1): KD = TCKD + (1 - p_gt^teacher) NCKD; here KD = .25 ln 2 = 0.1732868.
    assert kd(s, t, 1.0).item() == pytest.approx(tckd.item() + 0.5 * nckd.item(), abs=1e-6)


def test_dkd_matches_manual_sum_and_kd_decomposition():
    g = torch.Generator().manual_seed(9)
    s, t = torch.randn(5, 7, generator=g), 2 * torch.randn(5, 7, generator=g)
    y = torch.tensor([0, 3, 6, 3, 1])
    for alpha, beta, temp in ((1.0, 8.0, 4.0), (0.5, 2.0, 1.0), (2.0, 0.0, 3.0)):
        _close(dkd(s, t, y, alpha, beta, temp), _dkd_ref(s, t, y, alpha, beta, temp))
    tckd, nckd = dkd_parts(s, t, y, temperature=4.0)
    _close(dkd(s, t, y, 0.7, 3.0, 4.0), 0.7 * tckd.item() + 3.0 * nckd.item(), rel=1e-6)
    for i in range(5):  # eq. (1) per sample: the weight (1 - p_gt) differs between samples
        si, ti, yi = s[i : i + 1], t[i : i + 1], y[i : i + 1]
        a, b = dkd_parts(si, ti, yi, temperature=4.0)
        p_gt = torch.softmax(ti / 4.0, -1)[0, yi].item()
        _close(kd(si, ti, 4.0), a.item() + (1 - p_gt) * b.item())
    # Zero up to fp32 rounding: mdistiller's log(sum of probabilities) and log_softmax on the student side
    # vs the log kl_div takes of the same teacher probabilities differ in the last bit, times T^2 * beta.
    assert dkd(s, s, y).item() == pytest.approx(0.0, abs=1e-5)
    # The -1000 mask removes the target class from NCKD: moving the target logits leaves NCKD unchanged.
    s2, t2 = s.clone(), t.clone()
    s2[torch.arange(5), y] += 3.0
    t2[torch.arange(5), y] -= 2.0
    _close(dkd_parts(s2, t2, y)[1], nckd.item())


def test_dkd_beta_zero_with_confident_teacher_is_temperature_cross_entropy():
    # beta=0 keeps TCKD only; a teacher with p_gt ~ 1 makes it KL((1, 0) || (p_gt, 1 - p_gt)) = -log p_gt of
    # the student at temperature T, times T^2: the hard-label cross-entropy of the softened student.
    g = torch.Generator().manual_seed(10)
    s = torch.randn(4, 5, generator=g)
    y = torch.tensor([1, 0, 4, 2])
    t = torch.full((4, 5), -30.0)
    t[torch.arange(4), y] = 30.0
    for temp in (1.0, 2.0):
        expected = F.cross_entropy(s / temp, y).item() * temp**2
        _close(dkd(s, t, y, alpha=1.0, beta=0.0, temperature=temp), expected, rel=1e-5)
    # ... and with such a teacher plain KD is TCKD alone: (1 - p_gt) suppresses NCKD (the paper's point).
    _close(kd(s, t, 1.0), dkd(s, t, y, 1.0, 0.0, 1.0).item(), rel=1e-5)


def test_dkd_gradient_warmup_and_errors():
    s, t = torch.randn(3, 4), torch.randn(3, 4)
    y = torch.tensor([0, 1, 2])
    gs, _ = _grads(lambda a, b: dkd(a, b, y), s, t)
    assert torch.isfinite(gs).all() and gs.abs().sum() > 0
    assert dkd_warmup(1) == pytest.approx(0.05)
    assert dkd_warmup(10, 20) == 0.5 and dkd_warmup(20) == 1.0 and dkd_warmup(240) == 1.0
    assert dkd_warmup(3, 0) == 1.0
    with pytest.raises(ValueError):
        dkd_warmup(-1)
    with pytest.raises(ValueError, match="same shape"):
        dkd(s, t[:, :3], y)
    with pytest.raises(ValueError, match="integer class labels"):
        dkd(s, t, y.float())
    with pytest.raises(ValueError, match="integer class labels"):
        dkd(s, t, y[:2])


# ---------------------------------------------------------------------------------------------- DIST


def _softmax_np(z, temp):
    e = np.exp(z / temp - (z / temp).max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _dist_ref(s, t, temp):
    # Paper definition with numpy's Pearson correlation: rows (samples) for inter, columns (classes) for intra.
    ps, pt = _softmax_np(_np(s), temp), _softmax_np(_np(t), temp)
    inter = 1 - np.mean([np.corrcoef(ps[i], pt[i])[0, 1] for i in range(ps.shape[0])])
    intra = 1 - np.mean([np.corrcoef(ps[:, c], pt[:, c])[0, 1] for c in range(ps.shape[1])])
    return temp**2 * inter, temp**2 * intra


def test_dist_is_one_minus_pearson_over_samples_and_over_classes():
    g = torch.Generator().manual_seed(3)
    s, t = torch.randn(6, 5, generator=g), 3 * torch.randn(6, 5, generator=g)
    for temp in (1.0, 4.0):
        inter, intra = dist_parts(s, t, temp)
        ref_inter, ref_intra = _dist_ref(s, t, temp)
        _close(inter, ref_inter, rel=1e-5, abs_=1e-6)
        _close(intra, ref_intra, rel=1e-5, abs_=1e-6)
        _close(dist(s, t, 2.0, 0.5, temp), 2.0 * ref_inter + 0.5 * ref_intra, rel=1e-5, abs_=1e-6)
    # Identical predictions correlate perfectly: no loss. bf16 logits are computed in fp32.
    assert abs(dist(t, t).item()) < 1e-6
    assert dist(s.bfloat16(), t.bfloat16()).dtype == torch.float32
    # Pearson ignores scale and shift: a student whose probabilities are an affine map of the teacher's
    # has no inter-class loss, where KL does not vanish. Logits log(a p + b) give probabilities (a p + b) / Z.
    pt = torch.softmax(t, dim=1)
    s_affine = torch.log(0.3 * pt + 0.05)
    inter, _ = dist_parts(s_affine, t)
    assert abs(inter.item()) < 1e-6 and kd(s_affine, t, 1.0).item() > 1e-3


def test_dist_gradient_and_errors():
    g = torch.Generator().manual_seed(4)
    s = torch.randn(8, 10, generator=g, requires_grad=True)
    t = torch.randn(8, 10, generator=g)
    loss = dist(s, t, temperature=4.0)
    loss.backward()
    assert loss.item() > 0 and s.grad.abs().sum() > 0 and torch.isfinite(s.grad).all()
    with pytest.raises(ValueError, match="same shape"):
        dist(torch.randn(4, 10), torch.randn(4, 9))
    with pytest.raises(ValueError, match="same shape"):
        dist(torch.randn(10), torch.randn(10))
    with pytest.raises(ValueError, match="temperature"):
        dist(torch.randn(4, 10), torch.randn(4, 10), temperature=0.0)
    # One sample: the intra-class correlation over the batch is undefined; its term is a constant 1 (x T^2).
    one = torch.randn(1, 10, requires_grad=True)
    inter, intra = dist_parts(one, torch.randn(1, 10), 2.0)
    assert intra.item() == pytest.approx(4.0)
    intra.backward()
    assert one.grad.abs().max().item() == 0.0


# ---------------------------------------------------------------------------------------------- VID


def test_vid_hand_value_init_variance_and_gradients():
    vid = VIDLoss(1, 1, 1)  # init_pred_var=5
    with torch.no_grad():
        for m in vid.regressor:
            if isinstance(m, torch.nn.Conv2d):
                m.weight.fill_(1.0)  # regressor(s) = relu(relu(s)) = s for s >= 0
    assert vid.variance().item() == pytest.approx(5.0, rel=1e-6)
    s = torch.tensor([[[[1.0, 2.0]]]], requires_grad=True)
    t = torch.zeros(1, 1, 1, 2)
    # mean of 0.5 * ((s - t)^2 / 5 + ln 5) over 2 positions = 0.5 * ((1 + 4) / 2 / 5 + ln 5) = 1.0547190.
    loss = vid(s, t)
    assert loss.item() == pytest.approx(0.5 * (0.5 + math.log(5.0)), abs=1e-6)
    loss.backward()
    assert s.grad is not None and vid.log_scale.grad is not None
    assert all(m.weight.grad is not None for m in vid.regressor if isinstance(m, torch.nn.Conv2d))


def test_vid_matches_reference_and_errors():
    torch.manual_seed(11)
    vid = VIDLoss(3, 4, 2, init_pred_var=2.0)
    with torch.no_grad():
        vid.log_scale.copy_(torch.tensor([0.3, -1.0]))
    s, t = torch.randn(2, 3, 4, 4), torch.randn(2, 2, 2, 2)
    w = [_np(m.weight)[:, :, 0, 0] for m in vid.regressor if isinstance(m, torch.nn.Conv2d)]
    x = _pool_np(_np(s), (2, 2))  # the larger student map is pooled to the teacher's 2x2
    h = np.maximum(np.einsum("oc,bchw->bohw", w[0], x), 0)
    h = np.maximum(np.einsum("oc,bchw->bohw", w[1], h), 0)
    mu = np.einsum("oc,bchw->bohw", w[2], h)
    var = (np.log1p(np.exp(np.array([0.3, -1.0]))) + 1e-5).reshape(1, -1, 1, 1)
    _close(vid(s, t), np.mean(0.5 * ((mu - _np(t)) ** 2 / var + np.log(var))))
    with pytest.raises(ValueError, match="channels"):
        vid(torch.randn(2, 4, 2, 2), t)
    with pytest.raises(ValueError, match="batch"):
        vid(s, t[:1])


# ---------------------------------------------------------------------------------------------- CRD


def test_contrast_loss_hand_value_and_reference():
    # n_data = 2, K = 1: m Pn = 1/2. Scores (1/2, 1/2): log D1 = ln(.5 / 1) and log D0 = ln(.5 / 1),
    # loss = -(ln .5 + ln .5) = 2 ln 2 = 1.3862944 (eps = 1e-7 shifts it by 2e-7).
    assert contrast_loss(torch.tensor([[0.5, 0.5]]), n_data=2).item() == pytest.approx(
        2 * math.log(2), abs=1e-6
    )
    g = torch.Generator().manual_seed(12)
    x = torch.rand(3, 6, generator=g) * 0.1
    xn = _np(x)
    mpn = 5 / 100
    ref = (
        -sum(
            math.log(xn[i, 0] / (xn[i, 0] + mpn + 1e-7))
            + sum(math.log(mpn / (xn[i, j] + mpn + 1e-7)) for j in range(1, 6))
            for i in range(3)
        )
        / 3
    )
    _close(contrast_loss(x, 100), ref)
    _close(ContrastLoss(100)(x.unsqueeze(2)), ref)  # the reference's (batch, 1 + K, 1) layout works too
    with pytest.raises(ValueError, match="K >= 1"):
        contrast_loss(torch.ones(2, 1), 10)


def test_contrast_memory_scores_normaliser_and_momentum_update():
    mem = ContrastMemory(feat_dim=2, n_data=4, nce_k=2, nce_t=1.0, nce_m=0.5)
    rows = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    with torch.no_grad():
        mem.memory_student.copy_(rows)
        mem.memory_teacher.copy_(rows)
    v_s, v_t = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    idx, cidx = torch.tensor([1]), torch.tensor([[1, 0, 2]])
    out_s, out_t = mem(v_s, v_t, idx, cidx)
    # Student anchor vs teacher memory rows 1, 0, 2: dots 0, 1, -1 -> exp 1, e, 1/e. Z is set once from
    # this first batch as mean(exp) * n_data = (1 + e + 1/e) / 3 * 4.
    z = (1 + math.e + 1 / math.e) / 3 * 4
    torch.testing.assert_close(out_s, torch.tensor([[1.0, math.e, 1 / math.e]]) / z)
    assert mem.z_student.item() == pytest.approx(z, rel=1e-6)
    # Teacher anchor (0, 1) vs student memory rows 1, 0, 2: dots 1, 0, 0.
    assert mem.z_teacher.item() == pytest.approx((math.e + 2) / 3 * 4, rel=1e-6)
    # Momentum update of row 1 only: 0.5 * old + 0.5 * new, then unit length.
    # Student memory: .5 (0, 1) + .5 (1, 0) = (.5, .5) -> (1/sqrt2, 1/sqrt2); teacher: (0, 1) stays (0, 1).
    expected_s = rows.clone()
    expected_s[1] = torch.tensor([1 / SQ2, 1 / SQ2])
    torch.testing.assert_close(mem.memory_student, expected_s)
    torch.testing.assert_close(mem.memory_teacher, rows)
    # Z stays fixed after the first batch; in eval mode the memory is not written.
    mem.eval()
    before = mem.memory_student.clone()
    mem(torch.tensor([[0.0, -1.0]]), v_t, torch.tensor([2]), torch.tensor([[2, 3, 0]]))
    assert mem.z_student.item() == pytest.approx(z, rel=1e-6)
    torch.testing.assert_close(mem.memory_student, before)


def test_contrast_memory_uniform_sampling_defaults_and_errors():
    torch.manual_seed(13)
    crd = CRDLoss(s_dim=3, t_dim=2, n_data=10)
    mem = crd.contrast
    assert (mem.nce_k, mem.nce_t, mem.nce_m, mem.feat_dim) == (16384, 0.07, 0.5, 128)
    idx = torch.tensor([7, 2])
    drawn = mem.sample(idx)
    assert drawn.shape == (2, 16385)
    assert drawn[:, 0].tolist() == [7, 2]
    assert int(drawn.min()) >= 0 and int(drawn.max()) <= 9
    counts = torch.bincount(drawn[:, 1:].flatten(), minlength=10).float()
    assert (counts / counts.sum() - 0.1).abs().max() < 0.01  # uniform over the data set
    emb = Embed(5, 4)(torch.randn(3, 5))
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(3))
    with pytest.raises(ValueError, match="contrast_idx"):
        crd(torch.randn(2, 3), torch.randn(2, 2), idx, torch.zeros(2, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="idx"):
        crd(torch.randn(2, 3), torch.randn(2, 2), idx.float())
    with pytest.raises(ValueError, match="batch"):
        crd(torch.randn(2, 3), torch.randn(3, 2), idx)


def test_crd_buffers_checkpoint_and_loss_decreases_on_toy_problem():
    torch.manual_seed(14)
    n = 16
    crd = CRDLoss(s_dim=6, t_dim=5, n_data=n, feat_dim=8, nce_k=8)
    keys = set(crd.state_dict())
    assert {
        "contrast.memory_student",
        "contrast.memory_teacher",
        "contrast.z_student",
        "contrast.z_teacher",
    } <= keys
    assert crd.state_dict()["contrast.memory_student"].shape == (n, 8)
    teacher = torch.randn(n, 5)
    student = torch.randn(n, 6, requires_grad=True)  # stands in for a student network's features
    opt = torch.optim.Adam([student, *crd.parameters()], lr=0.05)
    idx = torch.arange(n)
    losses = []
    for _ in range(40):
        loss = crd(student, teacher, idx)
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert student.grad is not None and crd.embed_t.linear.weight.grad is not None
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])
    # The bank (memory and Z) round-trips through a state_dict.
    other = CRDLoss(s_dim=6, t_dim=5, n_data=n, feat_dim=8, nce_k=8)
    other.load_state_dict(crd.state_dict())
    torch.testing.assert_close(other.contrast.memory_teacher, crd.contrast.memory_teacher)
    assert other.contrast.z_student.item() == crd.contrast.z_student.item() > 0


def test_contrast_scores_one_gemm_equals_gathering_the_rows():
    # Small banks take one GEMM against the whole bank; large ones gather the sampled rows. Same numbers.
    torch.manual_seed(15)
    memory = F.normalize(torch.randn(50, 8), dim=1)
    cidx = torch.randint(0, 50, (4, 6))
    v = torch.randn(4, 8, requires_grad=True)
    gemm = ContrastMemory._scores(memory, v, cidx)  # 50 <= 16 * 6
    (g_gemm,) = torch.autograd.grad(gemm.exp().sum(), v)
    rows = torch.bmm(memory[cidx], v.unsqueeze(2)).squeeze(2)
    (g_rows,) = torch.autograd.grad(rows.exp().sum(), v)
    torch.testing.assert_close(gemm, rows)
    torch.testing.assert_close(g_gemm, g_rows)
    big = F.normalize(torch.randn(200, 8), dim=1)  # 200 > 16 * 6: the gather path
    cidx = torch.randint(0, 200, (4, 6))
    expect = (big[cidx] * v.detach().unsqueeze(1)).sum(-1)
    torch.testing.assert_close(ContrastMemory._scores(big, v.detach(), cidx), expect)
