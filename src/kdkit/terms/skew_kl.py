"""skew_kl: alpha-skew KL per token: KL(p, alpha * p + (1 - alpha) * q); alpha 0 is the forward KL (p teacher, q student)."""

from pydantic import Field

from kdkit.losses import skew_kl
from kdkit.terms.registry import Options, TermSpec


class SkewKLOptions(Options):
    """Options of `skew_kl`."""

    temperature: float = Field(1.0, gt=0, description="softening temperature T (the value is scaled by T^2)")
    alpha: float = Field(0.1, ge=0, le=1, description="skew: the share of the teacher in the mixture")


SPEC = TermSpec(
    name="skew_kl",
    kind="logits_labels",
    token=True,
    description="alpha-skew KL per token: KL(p, alpha * p + (1 - alpha) * q); alpha 0 is the forward KL",
    reference="Ko et al. 2024",
    fn=skew_kl,
    options=SkewKLOptions,
)
