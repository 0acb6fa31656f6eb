"""forward_kl: forward KL per token: T^2 * KL(teacher, student) averaged over the scored tokens (label -100 not scored) (p teacher, q student)."""

from pydantic import Field

from kdkit.losses import forward_kl
from kdkit.terms.registry import Options, TermSpec


class ForwardKLOptions(Options):
    """Options of `forward_kl`."""

    temperature: float = Field(1.0, gt=0, description="softening temperature T (the value is scaled by T^2)")


SPEC = TermSpec(
    name="forward_kl",
    kind="logits_labels",
    token=True,
    description="forward KL per token: T^2 * KL(teacher, student) averaged over the scored tokens (label -100 not scored)",
    reference="Hinton et al. 2015; Kim & Rush 2016",
    fn=forward_kl,
    options=ForwardKLOptions,
)
