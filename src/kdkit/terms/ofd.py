"""ofd: overhaul of feature distillation, pre-ReLU features, connector, margin ReLU, partial L2."""

from typing import Any

from torch import Tensor, nn

from kdkit.losses import OFDLoss
from kdkit.terms.registry import TermContext, TermSpec


def build_ofd(s: Tensor, t: Tensor, options: dict[str, Any], context: TermContext) -> nn.Module:
    """Return the OFD module sized from, and with margins measured on, the sample features."""
    return OFDLoss.from_features(s, t)


SPEC = TermSpec(
    name="ofd",
    kind="feature",
    description=(
        "OFD: pre-ReLU features through a 1x1 conv + BN connector against the teacher's margin ReLU "
        "(margins measured on the teacher), partial L2"
    ),
    reference="Heo et al. 2019",
    build=build_ofd,
)
