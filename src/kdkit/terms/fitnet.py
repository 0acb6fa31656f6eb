"""fitnet: FitNets hints, MSE between the (adapted) student feature and the teacher feature."""

from torch import Tensor

from kdkit.losses import fitnet
from kdkit.terms.registry import TermSpec


def fitnet_term(s: Tensor, t: Tensor) -> Tensor:
    """Return fitnet(s, t); a linear adapter yields flat features, compared with the flattened teacher map."""
    if s.shape != t.shape and s.ndim != t.ndim and s.flatten(1).shape == t.flatten(1).shape:
        return fitnet(s.flatten(1), t.flatten(1))
    return fitnet(s, t)


SPEC = TermSpec(
    name="fitnet",
    kind="feature",
    description="hint: MSE between the student feature (through a regressor) and the teacher feature",
    reference="Romero et al. 2015",
    fn=fitnet_term,
    needs_adapter_when_shapes_differ=True,
)
