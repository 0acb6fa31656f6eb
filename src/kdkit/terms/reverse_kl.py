"""reverse_kl: reverse KL per token: T^2 * KL(student, teacher) averaged over the scored tokens (mode-seeking) (p teacher, q student)."""

from pydantic import Field

from kdkit.losses import reverse_kl
from kdkit.terms.registry import Options, TermSpec


class ReverseKLOptions(Options):
    """Options of `reverse_kl`."""

    temperature: float = Field(1.0, gt=0, description="softening temperature T (the value is scaled by T^2)")


SPEC = TermSpec(
    name="reverse_kl",
    kind="logits_labels",
    token=True,
    description="reverse KL per token: T^2 * KL(student, teacher) averaged over the scored tokens (mode-seeking)",
    reference="Gu et al. 2024",
    fn=reverse_kl,
    options=ReverseKLOptions,
)
