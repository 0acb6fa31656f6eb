"""Adapters (regressors) that map a student's features to the teacher's shape; they train with the student.

They live in the objective, not in the student, so the exported student is exactly the user's model.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class ConvAdapter(nn.Module):
    """1x1 conv + BN from student channels to teacher channels, then pooling to the teacher's spatial size."""

    def __init__(self, in_channels: int, out_channels: int, out_size: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.out_size = tuple(out_size) if out_size else None

    def forward(self, x: Tensor) -> Tensor:
        """Return the adapted feature map (N, out_channels, *out_size)."""
        y = self.bn(self.conv(x))
        if self.out_size is not None and tuple(y.shape[-2:]) != self.out_size:
            y = F.adaptive_avg_pool2d(y, self.out_size)
        return y


class LinearAdapter(nn.Module):
    """Linear projection of flattened student features to the teacher's feature size."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_features, out_features)

    def forward(self, x: Tensor) -> Tensor:
        """Return the projected features (N, out_features)."""
        return self.proj(x.flatten(1))


class TokenAdapter(nn.Module):
    """Linear map of each token's feature (N, L, D_s) -> (N, L, D_t): TinyBERT's W_h between hidden states of
    two models that read the same token ids (the sequence length varies by batch, so it cannot be flattened)."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_features, out_features)

    def forward(self, x: Tensor) -> Tensor:
        """Return the projected token features (N, L, out_features)."""
        return self.proj(x)


def adapter_for(
    student_shape: tuple[int, ...], teacher_shape: tuple[int, ...], kind: str = "auto"
) -> nn.Module:
    """Return an adapter mapping features of student_shape to teacher_shape (batch dimension included).

    auto: a conv adapter between (N, C, H, W) maps, a token adapter between (N, L, D) sequences of the same
    length (hidden states of two text models), else a linear map of the flattened features.
    """
    tokens = len(student_shape) == 3 and len(teacher_shape) == 3 and student_shape[:2] == teacher_shape[:2]
    if kind == "token" or (kind == "auto" and tokens):
        if not tokens:
            raise ValueError(
                f"a token adapter needs (N, L, D) features of the same N and L, got {student_shape} and {teacher_shape}"
            )
        return TokenAdapter(student_shape[2], teacher_shape[2])
    if kind == "linear" or (kind == "auto" and (len(student_shape) != 4 or len(teacher_shape) != 4)):
        s = 1
        for d in student_shape[1:]:
            s *= d
        t = 1
        for d in teacher_shape[1:]:
            t *= d
        return LinearAdapter(s, t)
    if len(student_shape) != 4 or len(teacher_shape) != 4:
        raise ValueError(f"a conv adapter needs (N, C, H, W) maps, got {student_shape} and {teacher_shape}")
    return ConvAdapter(student_shape[1], teacher_shape[1], (teacher_shape[2], teacher_shape[3]))
