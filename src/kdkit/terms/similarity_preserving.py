"""similarity_preserving: match the batch's pairwise similarity matrices."""

from kdkit.losses import similarity_preserving
from kdkit.terms.registry import TermSpec

SPEC = TermSpec(
    name="similarity_preserving",
    kind="feature",
    description="SP: squared distance of the row-normalised batch similarity (Gram) matrices",
    reference="Tung & Mori 2019",
    fn=similarity_preserving,
)
