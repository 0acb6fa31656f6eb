"""rkd: relational KD, distance and angle relations of the batch."""

from pydantic import Field

from kdkit.losses import rkd
from kdkit.terms.registry import Options, TermSpec


class RKDOptions(Options):
    """Options of `rkd`."""

    distance_weight: float = Field(25.0, ge=0, description="weight of the distance relation")
    angle_weight: float = Field(50.0, ge=0, description="weight of the angle relation")


SPEC = TermSpec(
    name="rkd",
    kind="embedding",
    description="RKD: smooth-L1 between normalised pairwise distances and triplet angles of the batch",
    reference="Park et al. 2019",
    fn=rkd,
    options=RKDOptions,
)
