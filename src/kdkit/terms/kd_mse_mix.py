"""kd_mse_mix: mix * kd + (1 - mix) * logit_mse."""

from pydantic import Field

from kdkit.losses import kd_mse_mix
from kdkit.terms.registry import Options, TermSpec


class KDMSEMixOptions(Options):
    """Options of `kd_mse_mix`."""

    temperature: float = Field(4.0, gt=0, description="softening temperature T of the KL part")
    mix: float = Field(0.5, ge=0, le=1, description="1 = KL soft targets, 0 = logit MSE")


SPEC = TermSpec(
    name="kd_mse_mix",
    kind="logits",
    description="mix * soft-target KL + (1 - mix) * logit MSE",
    reference="Tang et al. 2019",
    fn=kd_mse_mix,
    options=KDMSEMixOptions,
    response=True,
)
