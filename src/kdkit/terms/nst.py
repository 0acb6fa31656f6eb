"""nst: neural selectivity transfer, MMD of channel distributions with a polynomial kernel."""

from kdkit.losses import nst
from kdkit.terms.registry import TermSpec

SPEC = TermSpec(
    name="nst",
    kind="feature",
    description="NST: polynomial-kernel MMD between the channels' normalised spatial maps",
    reference="Huang & Wang 2017",
    fn=nst,
)
