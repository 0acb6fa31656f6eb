"""ce: cross-entropy with the hard labels."""

from pydantic import Field

from kdkit.losses import cross_entropy
from kdkit.terms.registry import Options, TermSpec


class CEOptions(Options):
    """Options of `ce`."""

    label_smoothing: float = Field(0.0, ge=0, lt=1, description="label smoothing of the targets")


SPEC = TermSpec(
    name="ce",
    kind="labels",
    description="cross-entropy with the hard labels (reads no teacher)",
    reference="",
    fn=cross_entropy,  # kdkit.transfer recognises this very function to mask unlabeled images
    options=CEOptions,
)
