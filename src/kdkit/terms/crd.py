"""crd: contrastive representation distillation with a memory bank over the transfer set."""

from typing import Any

from pydantic import Field
from torch import Tensor, nn

from kdkit.losses import CRDLoss
from kdkit.terms.registry import Options, TermContext, TermSpec


class CRDOptions(Options):
    """Options of `crd`."""

    feat_dim: int = Field(128, ge=1, description="dimension of the shared embedding")
    nce_k: int = Field(16384, ge=1, description="negatives drawn from the memory bank per sample")
    nce_t: float = Field(0.07, gt=0, description="temperature of the NCE logits")
    nce_m: float = Field(0.5, ge=0, lt=1, description="momentum of the memory bank update")


class CRDTerm(nn.Module):
    """CRD over flattened features at the batch's dataset indices (memory bank rows)."""

    def __init__(self, crd: nn.Module) -> None:
        super().__init__()
        self.crd = crd  # the attribute name is part of saved objective checkpoints (adapters.termN.crd.*)

    def forward(self, s: Tensor, t: Tensor, index: Tensor) -> Tensor:
        """Return the contrastive loss of this batch."""
        return self.crd(s.flatten(1).float(), t.flatten(1).float(), index)


def build_crd(s: Tensor, t: Tensor, options: dict[str, Any], context: TermContext) -> nn.Module:
    """Return the CRD module sized from the flattened features and the transfer set."""
    if context.n_data is None:
        raise ValueError("crd keeps a memory bank over the transfer set: its size is needed")
    return CRDTerm(CRDLoss(s.flatten(1).shape[1], t.flatten(1).shape[1], context.n_data, **options))


SPEC = TermSpec(
    name="crd",
    kind="embedding",
    description="CRD: contrastive loss against negatives from a memory bank over the transfer set",
    reference="Tian et al. 2020",
    build=build_crd,
    options=CRDOptions,
    extra_inputs=("index",),
)
