"""mixup (Zhang et al. 2018) and CutMix (Yun et al. 2019) as per-image draws: a partner image, a weight, a box.

A draw is fixed data, like a crop offset: the same draw makes the same mixed image for the student, for an
online teacher and for the teacher-output cache (which keeps K draws per image), so the teacher always sees
exactly the image the student sees. The labels become the mixed targets lam * onehot(y) + (1 - lam) *
onehot(y_partner), which the hard-label cross-entropy reads as class probabilities.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

NONE, MIXUP, CUTMIX = 0, 1, 2


@dataclass
class MixDraws:
    """Per-image mixing: partner (a dataset index), the primary image's weight lam, the mode and the box."""

    partner: Tensor  # (n,) long, index of the partner image in the data set
    lam: Tensor  # (n,) float32 in [0, 1]: the primary image's share of the pixels and of the target
    mode: Tensor  # (n,) long: NONE, MIXUP or CUTMIX
    box: Tensor  # (n, 4) long: y0, y1, x0, x1 of the pasted partner region (CutMix rows)

    def __getitem__(self, idx: Tensor | tuple) -> MixDraws:
        return MixDraws(self.partner[idx], self.lam[idx], self.mode[idx], self.box[idx])

    def view(self, *shape: int) -> MixDraws:
        """Return the draws reshaped (e.g. (N * K,) -> (N, K))."""
        return MixDraws(
            self.partner.view(*shape), self.lam.view(*shape), self.mode.view(*shape), self.box.view(*shape, 4)
        )


def sample_mix(
    n: int, mixup: float, cutmix: float, pool: Tensor, size: tuple[int, int], gen: torch.Generator
) -> MixDraws:
    """Draw mixing for n images: partners from `pool` (a permutation of it when it has n entries: the batch),
    lam ~ Beta(a, a), mixup or CutMix with equal odds when both are on; CutMix's lam is the kept area."""
    if len(pool) == n:
        partner = pool[torch.randperm(n, generator=gen)]
    else:
        partner = pool[torch.randint(0, len(pool), (n,), generator=gen)]
    use_cutmix = torch.rand(n, generator=gen) < 0.5 if mixup and cutmix else torch.full((n,), bool(cutmix))
    mode = torch.where(use_cutmix, CUTMIX, MIXUP)
    # numpy draws Beta variates from a seed taken from the torch generator: reproducible like the rest.
    rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=gen)))
    alpha = np.where(use_cutmix.numpy(), cutmix or 1.0, mixup or 1.0)
    lam = torch.from_numpy(rng.beta(alpha, alpha).astype(np.float32))
    h, w = size
    cut = (1.0 - lam).sqrt()
    ch, cw = (cut * h).round().long(), (cut * w).round().long()
    cy = torch.randint(0, h, (n,), generator=gen)
    cx = torch.randint(0, w, (n,), generator=gen)
    y0, y1 = (cy - ch // 2).clamp(0, h), (cy + ch - ch // 2).clamp(0, h)
    x0, x1 = (cx - cw // 2).clamp(0, w), (cx + cw - cw // 2).clamp(0, w)
    box = torch.stack([y0, y1, x0, x1], dim=1)
    kept = 1.0 - ((y1 - y0) * (x1 - x0)).float() / (h * w)
    lam = torch.where(use_cutmix, kept, lam)
    return MixDraws(partner, lam, mode, box)


def mix_images(x: Tensor, partner: Tensor, draws: MixDraws) -> Tensor:
    """Return uint8 images (N, C, H, W) mixed with their (equally transformed) partner images."""
    h, w = x.shape[-2:]
    rows, cols = torch.arange(h), torch.arange(w)
    y0, y1, x0, x1 = draws.box.unbind(1)
    inside = ((rows >= y0[:, None]) & (rows < y1[:, None]))[:, :, None] & (
        (cols >= x0[:, None]) & (cols < x1[:, None])
    )[:, None, :]
    cut = (inside & (draws.mode == CUTMIX)[:, None, None])[:, None]
    lam = draws.lam.view(-1, 1, 1, 1)
    blended = (lam * x.float() + (1.0 - lam) * partner.float()).round_().to(torch.uint8)
    out = torch.where((draws.mode == MIXUP).view(-1, 1, 1, 1), blended, x)
    return torch.where(cut, partner, out)


def mixed_targets(labels: Tensor, partner_labels: Tensor, lam: Tensor, num_classes: int) -> Tensor:
    """Return class-probability targets (N, C): lam on the image's class, 1 - lam on its partner's."""
    own = torch.nn.functional.one_hot(labels, num_classes).float()
    other = torch.nn.functional.one_hot(partner_labels, num_classes).float()
    lam = lam.view(-1, 1)
    return lam * own + (1.0 - lam) * other
