"""dkd: decoupled KD, alpha * TCKD + beta * NCKD."""

from pydantic import Field

from kdkit.losses import dkd
from kdkit.terms.registry import Options, TermSpec


class DKDOptions(Options):
    """Options of `dkd`."""

    alpha: float = Field(1.0, ge=0, description="weight of target-class KD")
    beta: float = Field(8.0, ge=0, description="weight of non-target-class KD")
    temperature: float = Field(4.0, gt=0, description="softening temperature T")


SPEC = TermSpec(
    name="dkd",
    kind="logits_labels",
    description="decoupled KD: target-class and non-target-class KL weighted apart (reads the labels)",
    reference="Zhao et al. 2022",
    fn=dkd,
    options=DKDOptions,
)
