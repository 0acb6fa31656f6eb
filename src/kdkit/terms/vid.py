"""vid: variational information distillation, a Gaussian likelihood of the teacher feature given the student's."""

from typing import Any

from pydantic import Field
from torch import Tensor, nn

from kdkit.losses import VIDLoss
from kdkit.terms.registry import Options, TermContext, TermSpec


class VIDOptions(Options):
    """Options of `vid`."""

    mid_channels: int | None = Field(
        None, ge=1, description="regressor width (default: the teacher's channels)"
    )
    init_pred_var: float = Field(5.0, gt=0, description="initial predicted variance")
    eps: float = Field(1e-5, gt=0, description="added to the variance")


def build_vid(s: Tensor, t: Tensor, options: dict[str, Any], context: TermContext) -> nn.Module:
    """Return the VID loss module sized from the student and teacher feature maps."""
    if s.ndim != 4 or t.ndim != 4:
        raise ValueError(f"vid compares feature maps (N, C, H, W); got {tuple(s.shape)} and {tuple(t.shape)}")
    opts = dict(options)
    mid = opts.pop("mid_channels", None)
    return VIDLoss(s.shape[1], mid if mid is not None else t.shape[1], t.shape[1], **opts)


SPEC = TermSpec(
    name="vid",
    kind="feature",
    description="VID: the student predicts the teacher feature's mean, with a learned variance per channel",
    reference="Ahn et al. 2019",
    build=build_vid,
    options=VIDOptions,
)
