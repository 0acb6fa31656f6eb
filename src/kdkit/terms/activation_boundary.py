"""activation_boundary: AB, squared hinge on the side of the ReLU boundary, on pre-activations."""

from pydantic import Field

from kdkit.losses import activation_boundary
from kdkit.terms.registry import Options, TermSpec


class ABOptions(Options):
    """Options of `activation_boundary`."""

    margin: float = Field(1.0, ge=0, description="how far past the boundary the student is pushed")


SPEC = TermSpec(
    name="activation_boundary",
    kind="feature",
    description="AB: squared hinge putting each student pre-activation on the teacher's side of the ReLU",
    reference="Heo et al. 2019",
    fn=activation_boundary,
    options=ABOptions,
    needs_adapter_when_shapes_differ=True,
)
