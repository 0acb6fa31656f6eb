"""skew_reverse_kl: alpha-skew reverse KL per token: KL(q, (1 - alpha) * p + alpha * q); alpha 0 is the reverse KL (p teacher, q student)."""

from pydantic import Field

from kdkit.losses import skew_reverse_kl
from kdkit.terms.registry import Options, TermSpec


class SkewReverseKLOptions(Options):
    """Options of `skew_reverse_kl`."""

    temperature: float = Field(1.0, gt=0, description="softening temperature T (the value is scaled by T^2)")
    alpha: float = Field(0.1, ge=0, le=1, description="skew: the share of the student in the mixture")


SPEC = TermSpec(
    name="skew_reverse_kl",
    kind="logits_labels",
    token=True,
    description="alpha-skew reverse KL per token: KL(q, (1 - alpha) * p + alpha * q); alpha 0 is the reverse KL",
    reference="Ko et al. 2024",
    fn=skew_reverse_kl,
    options=SkewReverseKLOptions,
)
