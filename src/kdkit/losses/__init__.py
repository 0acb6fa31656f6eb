"""Distillation losses as plain functions (the reference definitions) and an objective that sums them."""

from kdkit.losses.objective import RESPONSE_LOSSES, Objective, Term
from kdkit.losses.response import cross_entropy, kd, kd_mse_mix, logit_mse, soft_target_kd

__all__ = [
    "RESPONSE_LOSSES",
    "Objective",
    "Term",
    "cross_entropy",
    "kd",
    "kd_mse_mix",
    "logit_mse",
    "soft_target_kd",
]
