"""dist: DIST, Pearson correlations of the predictions across classes and across the batch."""

from pydantic import Field

from kdkit.losses import dist
from kdkit.terms.registry import Options, TermSpec


class DISTOptions(Options):
    """Options of `dist`."""

    beta: float = Field(1.0, ge=0, description="weight of the inter-class (per sample) relation")
    gamma: float = Field(1.0, ge=0, description="weight of the intra-class (per class) relation")
    temperature: float = Field(1.0, gt=0, description="softening temperature T")


SPEC = TermSpec(
    name="dist",
    kind="logits",
    description="DIST: 1 - Pearson correlation of the predictions across classes and across the batch",
    reference="Huang et al. 2022",
    fn=dist,
    options=DISTOptions,
)
