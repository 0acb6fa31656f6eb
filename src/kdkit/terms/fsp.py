"""fsp: flow of solution procedure, Gram matrices of consecutive layers, over a list of layers per side."""

from collections.abc import Sequence

from torch import Tensor

from kdkit.losses import fsp
from kdkit.terms.registry import TermSpec


def check_fsp_layers(student: Sequence[tuple[str, Tensor]], teacher: Sequence[tuple[str, Tensor]]) -> None:
    """Refuse fsp layers that are not feature maps or whose channel counts differ between student and teacher."""
    for (sp, s), (tp, t) in zip(student, teacher):
        if s.ndim != 4 or t.ndim != 4:
            raise ValueError(
                f"fsp compares feature maps (N, C, H, W); student {sp!r} gives {tuple(s.shape)} and "
                f"teacher {tp!r} gives {tuple(t.shape)}"
            )
        if s.shape[1] != t.shape[1]:
            raise ValueError(
                f"fsp needs equal channel counts at each listed layer, but student {sp!r} has "
                f"{s.shape[1]} channels {tuple(s.shape)} and teacher {tp!r} has {t.shape[1]} {tuple(t.shape)}. "
                "FSP (Yim et al. 2017, as in RepDistiller) compares the flow matrices (C_next x C) of consecutive "
                "layers entry by entry, with no learned projection, so student and teacher must have the same "
                "widths layer by layer; list layers of matching widths (spatial sizes may differ: within a pair "
                "the larger map is average-pooled to the smaller)"
            )


SPEC = TermSpec(
    name="fsp",
    kind="layer_lists",
    description=(
        "FSP: flow matrices of consecutive listed layers (equal widths layer by layer, checked before training)"
    ),
    reference="Yim et al. 2017",
    fn=fsp,
    check=check_fsp_layers,
)
