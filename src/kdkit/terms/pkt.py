"""pkt: probabilistic knowledge transfer over flattened embeddings."""

from pydantic import Field

from kdkit.losses import pkt
from kdkit.terms.registry import Options, TermSpec


class PKTOptions(Options):
    """Options of `pkt`."""

    eps: float = Field(1e-7, gt=0, description="added to norms and inside the log")


SPEC = TermSpec(
    name="pkt",
    kind="embedding",
    description="PKT: KL between the cosine-similarity distributions of the batch",
    reference="Passalis & Tefas 2018",
    fn=pkt,
    options=PKTOptions,
)
