"""Distillation losses as plain functions (the reference definitions) and, where they hold state, modules."""

from kdkit.losses.contrastive import ContrastLoss, ContrastMemory, Embed, contrast_loss
from kdkit.losses.feature import (
    activation_boundary,
    attention_transfer,
    attention_transfer_multi,
    factor_transfer,
    fitnet,
    fsp,
    nst,
    ofd,
    ofd_margin,
)
from kdkit.losses.modules import CRDLoss, OFDLoss, Paraphraser, Translator, VIDLoss
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
from kdkit.losses.response import cross_entropy, kd, kd_mse_mix, logit_mse, soft_target_kd

__all__ = [
    "CRDLoss",
    "ContrastLoss",
    "ContrastMemory",
    "Embed",
    "OFDLoss",
    "Paraphraser",
    "Translator",
    "VIDLoss",
    "activation_boundary",
    "attention_transfer",
    "attention_transfer_multi",
    "contrast_loss",
    "correlation_congruence",
    "cross_entropy",
    "dist",
    "dist_parts",
    "dkd",
    "dkd_parts",
    "dkd_warmup",
    "factor_transfer",
    "fitnet",
    "fsp",
    "kd",
    "kd_mse_mix",
    "logit_mse",
    "nst",
    "ofd",
    "ofd_margin",
    "pkt",
    "rkd",
    "similarity_preserving",
    "soft_target_kd",
]
