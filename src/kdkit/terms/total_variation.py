"""total_variation: total variation distance per token: 1/2 * sum abs(p - q), averaged over the scored tokens (p teacher, q student)."""

from pydantic import Field

from kdkit.losses import total_variation
from kdkit.terms.registry import Options, TermSpec


class TotalVariationOptions(Options):
    """Options of `total_variation`."""

    temperature: float = Field(1.0, gt=0, description="softening temperature T (the value is scaled by T^2)")


SPEC = TermSpec(
    name="total_variation",
    kind="logits_labels",
    token=True,
    description="total variation distance per token: 1/2 * sum abs(p - q), averaged over the scored tokens",
    reference="Wen et al. 2023",
    fn=total_variation,
    options=TotalVariationOptions,
)
