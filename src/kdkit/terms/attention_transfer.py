"""attention_transfer: match the normalised spatial attention maps."""

from pydantic import Field

from kdkit.losses import attention_transfer
from kdkit.terms.registry import Options, TermSpec


class ATOptions(Options):
    """Options of `attention_transfer`."""

    p: float = Field(2, gt=0, description="power of |activation| averaged over channels")


SPEC = TermSpec(
    name="attention_transfer",
    kind="feature",
    description="squared distance of the L2-normalised spatial attention maps (channel counts may differ)",
    reference="Zagoruyko & Komodakis 2017",
    fn=attention_transfer,
    options=ATOptions,
)
