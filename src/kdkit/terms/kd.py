"""kd: Hinton's soft targets, T^2 * KL(softmax(t/T) || softmax(s/T))."""

from pydantic import Field

from kdkit.losses import kd
from kdkit.terms.registry import Options, TermSpec


class KDOptions(Options):
    """Options of `kd`."""

    temperature: float = Field(4.0, gt=0, description="softening temperature T")


SPEC = TermSpec(
    name="kd",
    kind="logits",
    description="soft targets: T^2 * KL between the softened teacher and student predictions",
    reference="Hinton et al. 2015",
    fn=kd,
    options=KDOptions,
    response=True,
)
