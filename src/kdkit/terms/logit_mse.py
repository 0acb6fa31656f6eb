"""logit_mse: mean squared error between student and teacher logits."""

from kdkit.losses import logit_mse
from kdkit.terms.registry import TermSpec

SPEC = TermSpec(
    name="logit_mse",
    kind="logits",
    description="mean squared error between the logits (logit regression)",
    reference="Ba & Caruana 2014",
    fn=logit_mse,
    response=True,
)
