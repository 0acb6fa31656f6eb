"""gkd_jsd: generalized Jensen-Shannon divergence per token, beta * KL(p, m) + (1 - beta) * KL(q, m) with m = beta * p + (1 - beta) * q; beta 0 is the forward KL, beta 1 the reverse KL (p teacher, q student)."""

from pydantic import Field

from kdkit.losses import generalized_jsd
from kdkit.terms.registry import Options, TermSpec


class GKDJSDOptions(Options):
    """Options of `gkd_jsd`."""

    temperature: float = Field(1.0, gt=0, description="softening temperature T (the value is scaled by T^2)")
    beta: float = Field(
        0.5, ge=0, le=1, description="interpolation: 0 forward KL, 1 reverse KL (GKD and TRL convention)"
    )


SPEC = TermSpec(
    name="gkd_jsd",
    kind="logits_labels",
    token=True,
    description="generalized Jensen-Shannon divergence per token, beta * KL(p, m) + (1 - beta) * KL(q, m) with m = beta * p + (1 - beta) * q; beta 0 is the forward KL, beta 1 the reverse KL",
    reference="Agarwal et al. 2024",
    fn=generalized_jsd,
    options=GKDJSDOptions,
)
