"""correlation_congruence: CC, correlations between the samples of a batch."""

from typing import Literal

from pydantic import Field

from kdkit.losses import correlation_congruence
from kdkit.terms.registry import Options, TermSpec


class CCOptions(Options):
    """Options of `correlation_congruence`."""

    kernel: Literal["repdistiller", "gaussian"] = Field(
        "repdistiller",
        description="repdistiller: RepDistiller's definition; gaussian: the paper's RBF kernel",
    )
    gamma: float = Field(0.4, gt=0, description="gaussian: kernel width")
    order: int = Field(2, ge=0, description="gaussian: order of the Taylor expansion")


SPEC = TermSpec(
    name="correlation_congruence",
    kind="embedding",
    description="CC: congruence of the sample-to-sample correlations of student and teacher embeddings",
    reference="Peng et al. 2019",
    fn=correlation_congruence,
    options=CCOptions,
)
