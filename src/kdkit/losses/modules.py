"""Distillation losses with parameters or state, as nn.Modules: VID, factor transfer's networks, CRD.

Register them in ``Objective(modules=...)`` so that their parameters train and their buffers are saved with
the student. Each restates a published reference (HobbitLong/RepDistiller), named in its docstring.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdkit.losses.contrastive import ContrastMemory, Embed, contrast_loss
from kdkit.losses.feature import _check_maps, _pool_to_common, ofd, ofd_margin


def _channels(shape: int | Sequence[int]) -> int:
    # RepDistiller passes whole NCHW shapes and reads element 1; a bare channel count is accepted too.
    return int(shape) if isinstance(shape, int) else int(shape[1])


def _conv_block(c_in: int, c_out: int, use_bn: bool, transpose: bool = False) -> list[nn.Module]:
    conv = nn.ConvTranspose2d if transpose else nn.Conv2d
    return [
        conv(c_in, c_out, 3, 1, 1),
        nn.BatchNorm2d(c_out) if use_bn else nn.Identity(),
        nn.LeakyReLU(0.1, inplace=True),
    ]


class Paraphraser(nn.Module):
    """Factor-transfer paraphraser on the teacher feature: conv encoder to the factor, deconv decoder back.

    RepDistiller ``models/util.py`` ``Paraphraser(t_shape, k=0.5, use_bn=False)``: three 3x3 convs
    (C -> C -> kC -> kC) and three 3x3 transposed convs back (kC -> kC -> C -> C), each followed by
    optional BatchNorm and LeakyReLU(0.1). It is trained first to reconstruct the teacher feature.
    """

    def __init__(self, t_shape: int | Sequence[int], k: float = 0.5, use_bn: bool = False) -> None:
        super().__init__()
        c = _channels(t_shape)
        out = int(c * k)
        if out < 1:
            raise ValueError(f"paraphrase rate k={k} leaves no factor channels for {c} teacher channels")
        self.encoder = nn.Sequential(
            *_conv_block(c, c, use_bn), *_conv_block(c, out, use_bn), *_conv_block(out, out, use_bn)
        )
        self.decoder = nn.Sequential(
            *_conv_block(out, out, use_bn, transpose=True),
            *_conv_block(out, c, use_bn, transpose=True),
            *_conv_block(c, c, use_bn, transpose=True),
        )

    def forward(self, f_t: Tensor, is_factor: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """Return the factor if is_factor, else (factor, reconstruction of f_t)."""
        factor = self.encoder(f_t)
        if is_factor:
            return factor
        return factor, self.decoder(factor)


class Translator(nn.Module):
    """Factor-transfer translator on the student feature: a conv encoder to the teacher's factor size.

    RepDistiller ``Translator(s_shape, t_shape, k=0.5, use_bn=True)``: three 3x3 convs
    (C_s -> C_s -> kC_t -> kC_t) with optional BatchNorm and LeakyReLU(0.1).
    """

    def __init__(
        self, s_shape: int | Sequence[int], t_shape: int | Sequence[int], k: float = 0.5, use_bn: bool = True
    ) -> None:
        super().__init__()
        c_s = _channels(s_shape)
        out = int(_channels(t_shape) * k)
        if out < 1:
            raise ValueError(f"rate k={k} leaves no factor channels for teacher shape {t_shape}")
        self.encoder = nn.Sequential(
            *_conv_block(c_s, c_s, use_bn), *_conv_block(c_s, out, use_bn), *_conv_block(out, out, use_bn)
        )

    def forward(self, f_s: Tensor) -> Tensor:
        """Return the student factor, shape (batch, k * C_t, H, W)."""
        return self.encoder(f_s)


class VIDLoss(nn.Module):
    """Variational information distillation (Ahn et al. 2019): Gaussian likelihood of the teacher feature.

    RepDistiller ``VIDLoss``: a regressor of three bias-free 1x1 convs with ReLU between them predicts the
    mean from the student feature; a learned per-channel variance softplus(log_scale) + eps, initialised
    to init_pred_var.
    """

    def __init__(
        self,
        num_input_channels: int,
        num_mid_channel: int,
        num_target_channels: int,
        init_pred_var: float = 5.0,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        if init_pred_var <= eps:
            raise ValueError(f"init_pred_var must exceed eps={eps}, got {init_pred_var}")
        self.regressor = nn.Sequential(
            nn.Conv2d(num_input_channels, num_mid_channel, kernel_size=1, bias=False),
            nn.ReLU(),
            nn.Conv2d(num_mid_channel, num_mid_channel, kernel_size=1, bias=False),
            nn.ReLU(),
            nn.Conv2d(num_mid_channel, num_target_channels, kernel_size=1, bias=False),
        )
        # Inverse softplus, so that softplus(log_scale) + eps == init_pred_var at the start.
        init = math.log(math.expm1(init_pred_var - eps))
        self.log_scale = nn.Parameter(torch.full((num_target_channels,), init))
        self.eps = eps
        self.num_input_channels = num_input_channels
        self.num_target_channels = num_target_channels

    def variance(self) -> Tensor:
        """Return the per-channel predicted variance softplus(log_scale) + eps, shape (channels,)."""
        return F.softplus(self.log_scale.float()) + self.eps

    def forward(self, student_feat: Tensor, teacher_feat: Tensor) -> Tensor:
        """Return mean over all elements of 0.5 * ((mu(s) - t)^2 / var + log var).

        Maps are pooled to the smaller spatial size first (as in the reference). The teacher is not
        detached, as in the reference.
        """
        _check_maps("VIDLoss", student_feat, teacher_feat)
        if (
            student_feat.shape[1] != self.num_input_channels
            or teacher_feat.shape[1] != self.num_target_channels
        ):
            raise ValueError(
                f"VIDLoss was built for {self.num_input_channels} student and {self.num_target_channels} "
                f"teacher channels; got student {tuple(student_feat.shape)} and teacher "
                f"{tuple(teacher_feat.shape)}"
            )
        s, t = _pool_to_common(student_feat, teacher_feat)
        mean = self.regressor(s).float()
        var = self.variance().view(1, -1, 1, 1)
        return torch.mean(0.5 * ((mean - t.float()).pow(2) / var + torch.log(var)))


class CRDLoss(nn.Module):
    """Contrastive representation distillation loss (Tian et al. 2020), RepDistiller ``CRDLoss``.

    Student and teacher features are embedded (linear + L2 norm) to feat_dim; a ``ContrastMemory`` over
    the n_data training samples supplies nce_k negatives per sample; the loss is the sum of the NCE losses
    with the student and with the teacher as anchor. The two embeddings are trainable parameters and the
    memory bank is a set of buffers: register this module in ``Objective(modules=...)``.
    """

    def __init__(
        self,
        s_dim: int,
        t_dim: int,
        n_data: int,
        feat_dim: int = 128,
        nce_k: int = 16384,
        nce_t: float = 0.07,
        nce_m: float = 0.5,
    ) -> None:
        super().__init__()
        self.embed_s = Embed(s_dim, feat_dim)
        self.embed_t = Embed(t_dim, feat_dim)
        self.contrast = ContrastMemory(feat_dim, n_data, nce_k, nce_t, nce_m)
        self.n_data = n_data

    def forward(self, f_s: Tensor, f_t: Tensor, idx: Tensor, contrast_idx: Tensor | None = None) -> Tensor:
        """Return the CRD loss for features (batch, ...) at dataset indices idx (batch,).

        contrast_idx (batch, 1 + K), positive first, overrides the uniform negative sampling.
        """
        if f_s.shape[0] != f_t.shape[0]:
            raise ValueError(
                f"CRDLoss: student {tuple(f_s.shape)} and teacher {tuple(f_t.shape)} have different batch sizes"
            )
        out_s, out_t = self.contrast(self.embed_s(f_s), self.embed_t(f_t), idx, contrast_idx)
        return contrast_loss(out_s, self.n_data) + contrast_loss(out_t, self.n_data)


class OFDLoss(nn.Module):
    """Overhaul of feature distillation (Heo et al. 2019): connector, teacher margin ReLU, partial L2.

    clovaai/overhaul-distillation ``Distiller``: the student's pre-ReLU feature goes through a connector
    (1x1 conv without bias + BatchNorm, conv weights drawn from N(0, 2 / out_channels); for flat features a
    bias-free linear layer + BatchNorm1d) to the teacher's channels, and is compared with ``ofd`` to the
    teacher's pre-ReLU feature after the margin ReLU. The margins (a buffer, saved with the run) are measured
    once from teacher pre-activations (``ofd_margin``); ``from_features`` builds both from a sample batch.
    """

    def __init__(self, s_channels: int, t_channels: int, margin: Tensor, spatial: bool = True) -> None:
        super().__init__()
        if margin.shape != (t_channels,):
            raise ValueError(
                f"OFDLoss: margin of shape {tuple(margin.shape)} for {t_channels} teacher channels"
            )
        if spatial:
            conv = nn.Conv2d(s_channels, t_channels, kernel_size=1, bias=False)
            nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / t_channels))
            self.connector = nn.Sequential(conv, nn.BatchNorm2d(t_channels))
        else:
            self.connector = nn.Sequential(
                nn.Linear(s_channels, t_channels, bias=False), nn.BatchNorm1d(t_channels)
            )
        self.register_buffer("margin", margin.detach().float().clone())

    @classmethod
    def from_features(cls, student_feat: Tensor, teacher_feat: Tensor) -> OFDLoss:
        """Return the loss sized from, and with margins measured on, sample features (batch, C[, H, W])."""
        if student_feat.dim() != teacher_feat.dim() or student_feat.dim() not in (2, 4):
            raise ValueError(
                "ofd compares pre-activations of the same kind on both sides, maps (N, C, H, W) or vectors (N, D); "
                f"got student {tuple(student_feat.shape)} and teacher {tuple(teacher_feat.shape)}"
            )
        return cls(
            student_feat.shape[1],
            teacher_feat.shape[1],
            ofd_margin(teacher_feat),
            spatial=student_feat.dim() == 4,
        )

    def forward(self, student_feat: Tensor, teacher_feat: Tensor) -> Tensor:
        """Return ``ofd(connector(student_feat), teacher_feat, margin)``."""
        return ofd(self.connector(student_feat), teacher_feat, self.margin)
