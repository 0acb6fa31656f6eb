"""Feature-map distillation losses: they compare intermediate activations (batch, channels, height, width).

Each function restates a published reference implementation (HobbitLong/RepDistiller ``distiller_zoo``);
the docstrings name it and any deliberate deviation. The math runs in fp32 whatever the input dtype.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def _shape(x: Tensor) -> tuple[int, ...]:
    return tuple(x.shape)


def _check_maps(name: str, student: Tensor, teacher: Tensor) -> None:
    if student.dim() != 4 or teacher.dim() != 4:
        raise ValueError(
            f"{name} expects feature maps of shape (batch, channels, height, width); got student "
            f"{_shape(student)} and teacher {_shape(teacher)}"
        )
    if student.shape[0] != teacher.shape[0]:
        raise ValueError(
            f"{name}: student {_shape(student)} and teacher {_shape(teacher)} have different batch sizes"
        )


def _pool_to_common(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Return both maps adaptive-average-pooled down to the smaller spatial size of the two.

    RepDistiller compares heights only and pools to (H, H), i.e. it assumes square maps; pooling each
    dimension to the smaller of the two is the same thing for square maps and also right for others.
    """
    size = (min(a.shape[2], b.shape[2]), min(a.shape[3], b.shape[3]))
    if tuple(a.shape[2:]) != size:
        a = F.adaptive_avg_pool2d(a, size)
    if tuple(b.shape[2:]) != size:
        b = F.adaptive_avg_pool2d(b, size)
    return a, b


def fitnet(student_feat: Tensor, teacher_feat: Tensor) -> Tensor:
    """Return the mean squared difference of two same-shaped feature tensors (FitNets hint loss).

    RepDistiller ``HintLoss`` (``nn.MSELoss()``). The student feature must already be mapped to the
    teacher's shape by a trainable adapter (the FitNets regressor); this loss does not guess one.
    """
    if student_feat.shape != teacher_feat.shape:
        raise ValueError(
            f"fitnet needs equal shapes, got student {_shape(student_feat)} and teacher "
            f"{_shape(teacher_feat)}; map the student feature to the teacher's shape with an adapter "
            f"(e.g. nn.Conv2d(student_channels, teacher_channels, kernel_size=1), or nn.Linear for "
            f"vectors) registered in Objective(modules=...) so that it trains with the student"
        )
    return F.mse_loss(student_feat.float(), teacher_feat.float())


def activation_boundary(student_preact: Tensor, teacher_preact: Tensor, margin: float = 1.0) -> Tensor:
    """Return the activation-boundary loss (Heo et al. 2019) between same-shaped pre-activations.

    Where a teacher neuron is active (pre-activation > 0) the student's pre-activation is pushed above
    +margin, where it is inactive below -margin, by a squared hinge: the student learns on which side of
    the ReLU's boundary each neuron falls, not the teacher's values. RepDistiller ``ABLoss``: the same
    masks and squares; it sums over elements and divides by batch x 1000, here the mean over elements (a
    constant factor of the term's weight), and one scalar margin where RepDistiller derives a margin per
    channel from the teacher's BatchNorm statistics. Read pre-activations with ":input" tap paths
    (``layer3.2.relu_out:input``); a student of another width needs an adapter (the paper's connector).
    """
    if student_preact.shape != teacher_preact.shape:
        raise ValueError(
            f"activation_boundary needs equal shapes, got student {_shape(student_preact)} and teacher "
            f"{_shape(teacher_preact)}; map the student feature to the teacher's shape with an adapter"
        )
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    s, t = student_preact.float(), teacher_preact.float()
    zero = s.new_zeros(())
    below = torch.where((t > 0) & (s <= margin), (s - margin) ** 2, zero)
    above = torch.where((t <= 0) & (s > -margin), (s + margin) ** 2, zero)
    return (below + above).mean()


def ofd_margin(teacher_preact: Tensor, eps: float = 1e-6) -> Tensor:
    """Return the per-channel margin E[x | x < 0] of teacher pre-activations, assumed Gaussian per channel.

    Heo et al. (2019), "A Comprehensive Overhaul of Feature Distillation" (clovaai/overhaul-distillation
    ``get_margin_from_BN``): with mean m and standard deviation s of a channel,
    margin = m - s * pdf(-m/s) / cdf(-m/s), and -3s where cdf(-m/s) <= 0.001 (almost never negative).
    The reference reads m and s from the BatchNorm (bias, weight) just before the ReLU; here they are the
    channel's measured mean and standard deviation over the batch (and positions of a map), which is the same
    quantity for a BN -> ReLU feature and also right for features without one (a residual sum, an MLP layer).
    Input (batch, channels[, H, W]); output (channels,), fp32, every entry negative.
    """
    if teacher_preact.dim() not in (2, 4) or teacher_preact.shape[0] < 2:
        raise ValueError(
            "ofd_margin expects pre-activations (batch >= 2, channels) or (batch >= 2, channels, height, width); "
            f"got {_shape(teacher_preact)}"
        )
    t = teacher_preact.detach().float().transpose(0, 1).reshape(teacher_preact.shape[1], -1)
    mean, std = t.mean(1), t.std(1).clamp_min(eps)
    z = -mean / std
    cdf = torch.special.ndtr(z)
    pdf = torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    return torch.where(cdf > 1e-3, mean - std * pdf / cdf.clamp_min(1e-3), -3 * std)


def ofd(student_preact: Tensor, teacher_preact: Tensor, margin: Tensor | float) -> Tensor:
    """Return OFD's partial L2 distance between a (connected) student pre-activation and the teacher's.

    clovaai/overhaul-distillation ``distillation_loss``: the teacher's negative responses are replaced by the
    channel's margin (target = max(t, margin), the "margin ReLU"); the squared difference counts where the
    target is positive or the student is above it, so a student already below a negative target is not pushed;
    the sum is divided by batch x 1000 as in the reference's training loop, so its loss weights carry over.
    Maps of different spatial size are pooled to the smaller one after the margin ReLU (the reference pools
    the teacher down). ``margin``: a scalar or one value per channel (``ofd_margin``).
    """
    if student_preact.shape[:2] != teacher_preact.shape[:2] or student_preact.dim() != teacher_preact.dim():
        raise ValueError(
            f"ofd needs the student's feature connected to the teacher's channels, got student "
            f"{_shape(student_preact)} and teacher {_shape(teacher_preact)}"
        )
    s, t = student_preact.float(), teacher_preact.detach().float()
    m = torch.as_tensor(margin, dtype=t.dtype, device=t.device)
    if m.dim() == 1:
        if m.numel() != t.shape[1]:
            raise ValueError(f"ofd: {m.numel()} margins for {t.shape[1]} teacher channels")
        m = m.view(1, -1, *([1] * (t.dim() - 2)))
    t = torch.maximum(t, m)
    if t.dim() == 4:
        s, t = _pool_to_common(s, t)
    sq = (s - t).pow(2) * ((s > t) | (t > 0))
    return sq.sum() / (s.shape[0] * 1000)


def _attention_map(f: Tensor, p: float) -> Tensor:
    # Channel-averaged |activation|^p, flattened per sample and L2-normalised (Zagoruyko & Komodakis 2017).
    return F.normalize(f.pow(p).mean(1).reshape(f.shape[0], -1))


def _at_pair(student_feat: Tensor, teacher_feat: Tensor, p: float) -> Tensor:
    _check_maps("attention_transfer", student_feat, teacher_feat)
    s, t = _pool_to_common(student_feat.float(), teacher_feat.float())
    return (_attention_map(s, p) - _attention_map(t, p)).pow(2).mean()


def attention_transfer(
    student_feat: Tensor | Sequence[Tensor], teacher_feat: Tensor | Sequence[Tensor], p: float = 2
) -> Tensor:
    """Return the attention-transfer loss mean((at(s) - at(t))^2), summed over pairs when given lists.

    RepDistiller ``Attention.at_loss``: at(f) = normalize(f.pow(p).mean(1).view(B, -1)). When the
    spatial sizes differ the larger map is adaptive-average-pooled to the smaller size first; channel
    counts may differ (the map averages them away). Lists of maps are paired in order and summed, as
    RepDistiller's ``train_student.py`` does with ``sum(loss_group)``. The teacher is not detached.
    """
    if isinstance(student_feat, Tensor) and isinstance(teacher_feat, Tensor):
        return _at_pair(student_feat, teacher_feat, p)
    if isinstance(student_feat, Tensor) or isinstance(teacher_feat, Tensor):
        raise ValueError("attention_transfer needs two tensors or two lists of tensors, not one of each")
    return attention_transfer_multi(student_feat, teacher_feat, p)


def attention_transfer_multi(
    student_feats: Sequence[Tensor], teacher_feats: Sequence[Tensor], p: float = 2
) -> Tensor:
    """Return the sum over paired layers of ``attention_transfer`` (RepDistiller ``Attention.forward``)."""
    if len(student_feats) != len(teacher_feats) or not student_feats:
        raise ValueError(
            f"attention_transfer needs equally long, non-empty lists of feature maps; got "
            f"{len(student_feats)} student and {len(teacher_feats)} teacher maps"
        )
    losses = [_at_pair(s, t, p) for s, t in zip(student_feats, teacher_feats)]
    return torch.stack(losses).sum()


def _poly_kernel(a: Tensor, b: Tensor) -> Tensor:
    # RepDistiller: ((a.unsqueeze(1) * b.unsqueeze(2)).sum(-1)) ** 2, shape (B, Cb, Ca). A batched matmul
    # gives the same numbers without the (B, Cb, Ca, HW) intermediate.
    return torch.bmm(b, a.transpose(1, 2)).pow(2)


def nst(student_feat: Tensor, teacher_feat: Tensor) -> Tensor:
    """Return the squared MMD with polynomial kernel (x.y)^2 between student and teacher channel maps.

    Neural Selectivity Transfer (Huang & Wang 2017), RepDistiller ``NSTLoss.nst_loss`` with
    ``full_loss=True``: each channel's spatial map is L2-normalised, then
    loss = mean k(t, t) [detached] + mean k(s, s) - 2 mean k(s, t). Spatial sizes are pooled to the
    smaller one; channel counts may differ. Only the teacher-teacher term is detached, as in the
    reference, so a teacher that requires grad still receives gradient through the cross term.
    """
    _check_maps("nst", student_feat, teacher_feat)
    s, t = _pool_to_common(student_feat.float(), teacher_feat.float())
    s = F.normalize(s.reshape(s.shape[0], s.shape[1], -1), dim=2)
    t = F.normalize(t.reshape(t.shape[0], t.shape[1], -1), dim=2)
    return _poly_kernel(t, t).mean().detach() + _poly_kernel(s, s).mean() - 2 * _poly_kernel(s, t).mean()


def _fsp_matrices(feats: Sequence[Tensor]) -> list[Tensor]:
    out = []
    for bot, top in zip(feats[:-1], feats[1:]):
        bot, top = _pool_to_common(bot.float(), top.float())
        b = bot.reshape(bot.shape[0], bot.shape[1], -1)
        t = top.reshape(top.shape[0], top.shape[1], -1)
        # G[j, i] = mean over positions of top_j * bot_i: RepDistiller's (bot.unsqueeze(1) * top.unsqueeze(2)).mean(-1).
        out.append(torch.bmm(t, b.transpose(1, 2)) / b.shape[2])
    return out


def fsp(student_feats: Sequence[Tensor], teacher_feats: Sequence[Tensor]) -> Tensor:
    """Return the sum over consecutive layer pairs of the mean squared difference of FSP matrices.

    Yim et al. (2017), RepDistiller ``FSP``: for layers i, i+1 (the larger pooled to the smaller
    spatial size) G = top_flat @ bot_flat^T / (H*W), shape (B, C_{i+1}, C_i); the loss of a pair is
    (G_s - G_t).pow(2).mean() and the pairs are summed as in RepDistiller's ``train_student.py``. Student
    and teacher need equal channel counts layer by layer (as in RepDistiller); spatial sizes may differ.
    """
    if len(student_feats) != len(teacher_feats) or len(student_feats) < 2:
        raise ValueError(
            f"fsp needs two equally long lists of at least 2 feature maps; got {len(student_feats)} "
            f"student and {len(teacher_feats)} teacher maps"
        )
    for i, (s, t) in enumerate(zip(student_feats, teacher_feats)):
        _check_maps("fsp", s, t)
        if s.shape[1] != t.shape[1]:
            raise ValueError(
                f"fsp layer {i}: student {_shape(s)} and teacher {_shape(t)} have different channel "
                f"counts; FSP matrices are only comparable for equal channels"
            )
    pairs = zip(_fsp_matrices(student_feats), _fsp_matrices(teacher_feats))
    return torch.stack([(gs - gt).pow(2).mean() for gs, gt in pairs]).sum()


def factor_transfer(student_factor: Tensor, teacher_factor: Tensor, p: int = 1) -> Tensor:
    """Return the mean |factor(s) - factor(t)|^p between translator and paraphraser factors (p = 1 or 2).

    Kim et al. (2018), RepDistiller ``FactorTransfer(p1=2, p2=p)``: factor(f) = normalize(f.pow(2)
    .mean(1).view(B, -1)), maps pooled to the smaller spatial size. Inputs are the student's
    ``Translator`` output and the teacher's ``Paraphraser`` factor (``is_factor=True``).
    """
    if p not in (1, 2):
        raise ValueError(f"factor_transfer supports p=1 (L1, the paper's choice) or p=2, got {p}")
    _check_maps("factor_transfer", student_factor, teacher_factor)
    s, t = _pool_to_common(student_factor.float(), teacher_factor.float())
    diff = _attention_map(s, 2) - _attention_map(t, 2)
    return diff.abs().mean() if p == 1 else diff.pow(2).mean()
